// The local platform's Hadoop daemons: Hadoop's own MiniDFSCluster (a real NameNode and
// DataNodes, WebHDFS included) or MiniYARNCluster (a real ResourceManager and NodeManagers)
// in one JVM, configured by the site files local_platform/services.py writes.
//
//   java -cp <lib>/*:<classes> LocalHadoop hdfs <daemon conf dir> <state dir> <ready file> <control port>
//   java -cp <lib>/*:<classes> LocalHadoop yarn <conf dir> <state dir> <ready file>
//
// The ready file (JSON) is written once the daemons serve: the NameNode out of safe mode with
// every DataNode registered, or every NodeManager registered with the ResourceManager.  It names
// the ports the daemons really listen on.  The HDFS JVM also answers a loopback control port
// (POST /namenode/stop|start, /datanode/<i>/stop|start, /safemode/enter|leave, GET /status) so fault tests stop and
// restart single daemons the way an operator would lose a machine; data lives on disk under the
// state dir and survives a restart of the JVM (formatted only on the very first start).
import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.File;
import java.io.IOException;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.fs.SafeModeAction;
import org.apache.hadoop.hdfs.MiniDFSCluster;
import org.apache.hadoop.hdfs.server.datanode.DataNode;
import org.apache.hadoop.yarn.conf.YarnConfiguration;
import org.apache.hadoop.yarn.server.MiniYARNCluster;

public final class LocalHadoop {
  private static final Pattern DATANODE = Pattern.compile("/datanode/([0-9]+)/(stop|start)");

  public static void main(String[] args) {
    try {
      run(args);
    } catch (Throwable e) {
      // The daemons' own threads would keep a JVM whose start failed alive: exit, so `platform up` says why.
      e.printStackTrace();
      System.exit(1);
    }
  }

  private static void run(String[] args) throws Exception {
    if (args.length < 4) {
      System.err.println("usage: LocalHadoop hdfs|yarn <conf dir> <state dir> <ready file> [control port]");
      System.exit(2);
    }
    File confDir = new File(args[1]);
    File stateDir = new File(args[2]);
    File ready = new File(args[3]);
    Configuration conf = new Configuration();
    for (String site : new String[] {"core-site.xml", "hdfs-site.xml", "yarn-site.xml", "local-daemons.xml"}) {
      conf.addResource(new Path(new File(confDir, site).getAbsolutePath()));
    }
    if (args[0].equals("hdfs")) {
      runHdfs(conf, stateDir, ready, Integer.parseInt(args[4]));
    } else if (args[0].equals("yarn")) {
      runYarn(new YarnConfiguration(conf), stateDir, ready);
    } else {
      System.err.println("unknown daemon kind: " + args[0]);
      System.exit(2);
    }
  }

  private static void runHdfs(Configuration conf, File stateDir, File ready, int controlPort) throws Exception {
    conf.set(MiniDFSCluster.HDFS_MINIDFS_BASEDIR, stateDir.getAbsolutePath());
    // Formatting wipes the folder: only on the very first start.
    boolean fresh = !new File(stateDir, "name-0-1/current/VERSION").exists()
        && !new File(stateDir, "name1/current/VERSION").exists();
    int datanodes = conf.getInt("mediation.local.datanodes", 2);
    MiniDFSCluster cluster = new MiniDFSCluster.Builder(conf, stateDir)
        .numDataNodes(datanodes)
        .nameNodePort(conf.getInt("mediation.local.namenode.rpc-port", 8020))
        .nameNodeHttpPort(conf.getInt("mediation.local.namenode.http-port", 9870))
        .format(fresh)
        // Listen where the site files say (a container's 0.0.0.0) instead of MiniDFSCluster's 127.0.0.1.
        .checkDataNodeAddrConfig(conf.getBoolean("mediation.local.datanode.configured-address", false))
        .build();
    cluster.waitActive();
    Runtime.getRuntime().addShutdownHook(new Thread(() -> cluster.shutdown(false)));
    Map<Integer, MiniDFSCluster.DataNodeProperties> stopped = new HashMap<>();
    // Stable DataNode numbers: MiniDFSCluster's own indexes shift as DataNodes stop and restart.
    List<String> names = new ArrayList<>();
    for (DataNode dn : cluster.getDataNodes()) {
      names.add(dn.getDatanodeId().getXferAddr());
    }
    HttpServer control = HttpServer.create(new InetSocketAddress("127.0.0.1", controlPort), 8);
    control.createContext("/", exchange -> {
      String path = exchange.getRequestURI().getPath();
      try {
        synchronized (stopped) {
          if (path.equals("/status")) {
            reply(exchange, 200, hdfsState(cluster, stopped));
            return;
          }
          if (!exchange.getRequestMethod().equals("POST")) {
            reply(exchange, 405, "{\"error\": \"POST only\"}");
            return;
          }
          Matcher dn = DATANODE.matcher(path);
          if (path.equals("/namenode/stop")) {
            cluster.shutdownNameNode(0);
          } else if (path.equals("/namenode/start")) {
            cluster.restartNameNode(0, true);
          } else if (path.equals("/safemode/enter") || path.equals("/safemode/leave")) {
            cluster.getFileSystem(0).setSafeMode(
                path.endsWith("enter") ? SafeModeAction.ENTER : SafeModeAction.LEAVE);
          } else if (dn.matches()) {
            int index = Integer.parseInt(dn.group(1));
            if (index >= names.size()) {
              reply(exchange, 404, "{\"error\": \"no such datanode\"}");
              return;
            }
            if (dn.group(2).equals("stop")) {
              if (!stopped.containsKey(index)) {
                stopped.put(index, cluster.stopDataNode(names.get(index)));
              }
            } else if (stopped.containsKey(index)) {
              cluster.restartDataNode(stopped.remove(index), true);
              cluster.waitActive();
            }
          } else {
            reply(exchange, 404, "{\"error\": \"unknown control path\"}");
            return;
          }
          reply(exchange, 200, hdfsState(cluster, stopped));
        }
      } catch (Exception e) {
        reply(exchange, 500, "{\"error\": " + quote(e.toString()) + "}");
      }
    });
    control.start();
    writeAtomically(ready, hdfsState(cluster, stopped));
    System.out.println("local HDFS ready: " + hdfsState(cluster, stopped));
    Thread.currentThread().join();
  }

  private static String hdfsState(MiniDFSCluster cluster, Map<Integer, ?> stopped) {
    StringBuilder json = new StringBuilder("{");
    // isNameNodeUp is false in safe mode: "up" here means the NameNode is running.
    boolean up = cluster.getNameNode(0) != null;
    json.append("\"namenode_up\": ").append(up);
    try {
      json.append(", \"safemode\": ").append(up && cluster.getNameNode(0).isInSafeMode());
    } catch (Exception e) {
      json.append(", \"safemode\": null");
    }
    json.append(", \"datanodes\": [");
    List<String> nodes = new ArrayList<>();
    for (DataNode dn : cluster.getDataNodes()) {
      nodes.add("{\"xfer_port\": " + dn.getXferPort() + ", \"http_port\": " + dn.getInfoPort()
          + ", \"ipc_port\": " + dn.getIpcPort() + "}");
    }
    json.append(String.join(", ", nodes)).append("], \"stopped_datanodes\": ").append(stopped.keySet());
    return json.append("}").toString();
  }

  private static void runYarn(YarnConfiguration conf, File stateDir, File ready) throws Exception {
    conf.setBoolean(YarnConfiguration.YARN_MINICLUSTER_FIXED_PORTS, true);
    conf.setBoolean(YarnConfiguration.YARN_MINICLUSTER_USE_RPC, true);
    int nodeManagers = conf.getInt("mediation.local.nodemanagers", 1);
    // MiniYARNCluster keeps its work under ./target/<name>: local_platform/services.py starts this JVM in stateDir.
    MiniYARNCluster cluster = new MiniYARNCluster("local-yarn", nodeManagers, 1, 1);
    cluster.init(conf);
    cluster.start();
    if (!cluster.waitForNodeManagersToConnect(120_000)) {
      throw new IllegalStateException("NodeManagers did not register with the ResourceManager within 120 s");
    }
    Runtime.getRuntime().addShutdownHook(new Thread(cluster::stop));
    String rm = cluster.getConfig().get(YarnConfiguration.RM_WEBAPP_ADDRESS);
    String state = "{\"resourcemanager_webapp\": " + quote(rm) + ", \"resourcemanager\": "
        + quote(cluster.getConfig().get(YarnConfiguration.RM_ADDRESS)) + ", \"nodemanagers\": " + nodeManagers + "}";
    writeAtomically(ready, state);
    System.out.println("local YARN ready: " + state);
    Thread.currentThread().join();
  }

  private static void reply(HttpExchange exchange, int code, String body) throws IOException {
    byte[] bytes = body.getBytes(StandardCharsets.UTF_8);
    exchange.getResponseHeaders().set("Content-Type", "application/json");
    exchange.sendResponseHeaders(code, bytes.length);
    try (OutputStream out = exchange.getResponseBody()) {
      out.write(bytes);
    }
  }

  private static String quote(String s) {
    return "\"" + String.valueOf(s).replace("\\", "\\\\").replace("\"", "\\\"") + "\"";
  }

  private static void writeAtomically(File target, String content) throws IOException {
    File tmp = new File(target.getPath() + ".tmp");
    Files.write(tmp.toPath(), content.getBytes(StandardCharsets.UTF_8));
    Files.move(tmp.toPath(), target.toPath(), StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
  }
}
