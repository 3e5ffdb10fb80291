package org.elasticsearch.node;

import org.apache.logging.log4j.Level;
import org.apache.logging.log4j.LogManager;
import org.apache.logging.log4j.Logger;
import org.apache.logging.log4j.core.config.Configurator;
import org.apache.logging.log4j.core.config.builder.api.ConfigurationBuilder;
import org.apache.logging.log4j.core.config.builder.api.ConfigurationBuilderFactory;
import org.apache.logging.log4j.core.config.builder.impl.BuiltConfiguration;
import org.elasticsearch.common.logging.LogConfigurator;
import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.env.Environment;
import org.elasticsearch.plugins.MockPluginsService;
import org.elasticsearch.plugins.Plugin;
import org.elasticsearch.plugins.PluginsLoader;
import org.elasticsearch.plugins.PluginsService;
import org.elasticsearch.transport.netty4.Netty4Plugin;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

/**
 * Starts one Elasticsearch node on 127.0.0.1 from the jars on the classpath and keeps it running until the JVM receives
 * SIGTERM or SIGINT, which closes the node through a shutdown hook.
 *
 * <p>The class lives in {@code org.elasticsearch.node} because the only way to hand classpath plugins to a node is
 * {@link NodeConstruction#prepareConstruction} with a {@link NodeServiceProvider}, and both are package-private since
 * Elasticsearch 8.12.0. This is the same path as {@code MockNode} in Elasticsearch's test framework. The signature used
 * here, with a {@link PluginsLoader} argument, is the one of 8.18.8 and 8.19.21, which 8.12.0 lacks.
 *
 * <p>Only the server jar and the {@code transport-netty4} plugin are loaded. Modules that the official distribution
 * ships next to them (painless, mapper-extras, analysis-common, reindex, rest-root, x-pack, ...) are absent from Maven
 * Central and therefore missing here.
 *
 * <p>Options, all {@code --name=value}:
 * <ul>
 *   <li>{@code --home}: folder for path.home, which gets the data, logs and config folders (required)</li>
 *   <li>{@code --http-port}: HTTP port, 0 lets the OS choose (default 9200)</li>
 *   <li>{@code --transport-port}: transport port, 0 lets the OS choose (default 0)</li>
 *   <li>{@code --cluster-name} (default {@code eta1}) and {@code --node-name} (default {@code eta1-node})</li>
 *   <li>{@code --log-level}: root log level (default INFO)</li>
 *   <li>{@code -Ekey=value}: any further node setting, as with the {@code elasticsearch} command</li>
 * </ul>
 * The bound addresses are written to {@code <home>/logs/http.ports} and {@code transport.ports}
 * ({@code node.portsfile}), so a caller that passed port 0 can read the chosen port there.
 */
public final class Eta1Node {

    private static final String USAGE = "usage: Eta1Node --home=DIR [--http-port=9200] [--transport-port=0] "
        + "[--cluster-name=eta1] [--node-name=eta1-node] [--log-level=INFO] [-Ekey=value ...]";

    /** Upper bound for {@link Node#awaitClose} in the shutdown hook. */
    private static final long CLOSE_TIMEOUT_SECONDS = 30;

    private Eta1Node() {}

    public static void main(String[] args) throws Exception {
        Map<String, String> options = new LinkedHashMap<>();
        Settings.Builder extraSettings = Settings.builder();
        Level logLevel = null;
        try {
            parseArgs(args, options, extraSettings);
            String levelName = options.getOrDefault("log-level", "INFO");
            logLevel = Level.getLevel(levelName.toUpperCase(Locale.ROOT));
            if (logLevel == null) {
                throw new IllegalArgumentException(
                    "invalid --log-level [" + levelName + "], expected e.g. WARN, INFO or DEBUG"
                );
            }
        } catch (IllegalArgumentException e) {
            System.err.println("Eta1Node: " + e.getMessage());
            System.err.println(USAGE);
            System.exit(2);
        }

        // Log4j must be configured before the first logger is created. Otherwise it searches the classpath for a
        // configuration and finds log4j2-test.properties in the test framework jar, whose pattern needs test-only
        // converters.
        configureLogging(logLevel);
        Logger logger = LogManager.getLogger(Eta1Node.class);

        Path home = Path.of(options.get("home")).toAbsolutePath().normalize();
        Settings settings = nodeSettings(home, options, extraSettings.build());
        Node node;
        try {
            node = createNode(home, settings);
        } catch (Exception e) {
            logger.fatal("failed to build the node in [" + home + "]: " + describeCauses(e), e);
            LogManager.shutdown();
            System.exit(1);
            return;
        }

        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> closeNode(node, logger, stopped), "eta1-node-shutdown"));

        try {
            node.start();
        } catch (Exception e) {
            logger.fatal("failed to start the node in [" + home + "]: " + describeCauses(e), e);
            // exit() runs the shutdown hook, which closes the half-started node and releases the data folder lock.
            System.exit(1);
        }
        logger.info(
            "node [{}] of cluster [{}] started, home [{}]",
            settings.get("node.name"),
            settings.get("cluster.name"),
            home
        );

        // The node's own threads keep the JVM alive too, but waiting here makes the lifetime explicit.
        stopped.await();
    }

    /** Creates the node with {@link Netty4Plugin} as its only plugin, the way {@code MockNode} adds plugins. */
    private static Node createNode(Path home, Settings settings) throws IOException {
        Path configDir = home.resolve("config");
        Files.createDirectories(configDir);
        // Node.start() writes the ports files there but does not create the folder.
        Files.createDirectories(home.resolve("logs"));

        Environment environment = InternalSettingsPreparer.prepareEnvironment(
            settings,
            Map.of(),
            configDir,
            () -> settings.get("node.name")
        );
        List<Class<? extends Plugin>> plugins = List.of(Netty4Plugin.class);
        NodeServiceProvider serviceProvider = new NodeServiceProvider() {
            @Override
            PluginsService newPluginService(Environment env, PluginsLoader pluginsLoader) {
                return new MockPluginsService(env.settings(), env, plugins);
            }
        };
        // A null PluginsLoader is what MockNode passes, because MockPluginsService builds its own empty one.
        return new Node(NodeConstruction.prepareConstruction(environment, null, serviceProvider, true));
    }

    private static void parseArgs(String[] args, Map<String, String> options, Settings.Builder extraSettings) {
        List<String> known = List.of("home", "http-port", "transport-port", "cluster-name", "node-name", "log-level");
        for (String arg : args) {
            if (arg.startsWith("-E")) {
                int eq = arg.indexOf('=');
                if (eq <= 2) {
                    throw new IllegalArgumentException("invalid setting [" + arg + "], expected -Ekey=value");
                }
                extraSettings.put(arg.substring(2, eq), arg.substring(eq + 1));
                continue;
            }
            int eq = arg.indexOf('=');
            String name = arg.startsWith("--") && eq > 2 ? arg.substring(2, eq) : null;
            if (name == null || known.contains(name) == false) {
                throw new IllegalArgumentException("unknown argument [" + arg + "]");
            }
            options.put(name, arg.substring(eq + 1));
        }
        if (options.containsKey("home") == false || options.get("home").isEmpty()) {
            throw new IllegalArgumentException("missing --home");
        }
    }

    private static Settings nodeSettings(Path home, Map<String, String> options, Settings extraSettings) {
        return Settings.builder()
            .put("path.home", home.toString())
            .put("path.data", home.resolve("data").toString())
            .put("path.logs", home.resolve("logs").toString())
            .put("cluster.name", options.getOrDefault("cluster-name", "eta1"))
            .put("node.name", options.getOrDefault("node-name", "eta1-node"))
            .put("discovery.type", "single-node")
            .put("network.host", "127.0.0.1")
            .put("http.port", options.getOrDefault("http-port", "9200"))
            .put("transport.port", options.getOrDefault("transport-port", "0"))
            .put(Node.WRITE_PORTS_FILE_SETTING.getKey(), true)
            // Disk watermarks would make indices read-only on a nearly full CI disk, which tests cannot tell apart
            // from a product bug.
            .put("cluster.routing.allocation.disk.threshold_enabled", false)
            .put(extraSettings)
            .build();
    }

    private static void closeNode(Node node, Logger logger, CountDownLatch stopped) {
        logger.info("stopping node");
        try {
            node.prepareForClose();
            node.close();
            if (node.awaitClose(CLOSE_TIMEOUT_SECONDS, TimeUnit.SECONDS) == false) {
                logger.warn("node did not close within {}s", CLOSE_TIMEOUT_SECONDS);
            } else {
                logger.info("node stopped");
            }
        } catch (Exception e) {
            logger.error("failed to close the node", e);
        } finally {
            stopped.countDown();
            LogManager.shutdown();
        }
    }

    /** Returns the exception chain on one line, e.g. {@code BindHttpException: ...; caused by BindException: ...}. */
    private static String describeCauses(Throwable e) {
        StringBuilder description = new StringBuilder();
        for (Throwable cause = e; cause != null && description.length() < 1000; cause = cause.getCause()) {
            if (cause != e) {
                description.append("; caused by ");
            }
            description.append(cause.getClass().getSimpleName()).append(": ").append(cause.getMessage());
            if (cause.getCause() == cause) {
                break;
            }
        }
        return description.toString();
    }

    /** Sends everything at {@code rootLevel} and above to stdout; es/start.sh redirects stdout to the log file. */
    private static void configureLogging(Level rootLevel) {
        ConfigurationBuilder<BuiltConfiguration> builder = ConfigurationBuilderFactory.newConfigurationBuilder();
        builder.setStatusLevel(Level.ERROR);
        // Without Log4j's own shutdown hook, logging keeps working while closeNode() runs during JVM shutdown.
        builder.setShutdownHook("disable");
        builder.add(
            builder.newAppender("stdout", "Console")
                .addAttribute("target", "SYSTEM_OUT")
                .add(builder.newLayout("PatternLayout").addAttribute("pattern", "[%d{ISO8601}][%-5p][%c{1.}] %m%n"))
        );
        builder.add(builder.newRootLogger(rootLevel).add(builder.newAppenderRef("stdout")));
        // Deprecation warnings reach clients as HTTP Warning headers. In the log they only repeat per request.
        builder.add(builder.newLogger("org.elasticsearch.deprecation", Level.ERROR));
        Configurator.initialize(builder.build());
        // Routes Elasticsearch's own logging API (org.elasticsearch.logging) to Log4j, like the elasticsearch command.
        LogConfigurator.configureESLogging();
    }
}
