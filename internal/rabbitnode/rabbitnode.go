// Package rabbitnode starts a RabbitMQ node of the caller's own from the machine's rabbitmq-server
// package: its own node name, free ports, config, data and log directory. Tests that raise a
// resource alarm or need a TLS listener use one, so the machine's shared broker is never touched.
package rabbitnode

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// Bin holds the package's own scripts. /usr/sbin's are a wrapper that, run as root, goes through
// `su`, which starts a session of its own: the node would then escape the process group Stop
// kills, and a timeout in rabbitmqctl would leave its client running.
const Bin = "/usr/lib/rabbitmq/bin"

// dirPrefix names the nodes' directories under os.TempDir, so stale ones can be found.
const dirPrefix = "dsmproxy-rabbit-"

// TLS is the PEM material of a node's AMQP-over-TLS listener.
type TLS struct {
	CertPEM, KeyPEM, CAPEM []byte
}

// Config says what node to start.
type Config struct {
	// Name prefixes the Erlang node name (<Name>-<pid>@localhost); default "dsmproxy".
	Name string
	// TLS, when set, adds an AMQP-over-TLS listener (Node.TLSAddr) that asks for no client
	// certificate.
	TLS *TLS
	// Boot bounds the wait for the node to answer AMQP; default 90 s.
	Boot time.Duration
}

// Node is a running node.
type Node struct {
	Name    string // Erlang node name, for rabbitmqctl -n
	Addr    string // plain AMQP listener, host:port
	TLSAddr string // AMQP over TLS listener, when Config.TLS was set
	dir     string
	cmd     *exec.Cmd
	user    account
	log     string // the node's console output
}

// URL is the guest account's AMQP URL of the plain listener.
func (n *Node) URL() string { return "amqp://guest:guest@" + n.Addr + "/" }

// account is the uid and gid the node and rabbitmqctl run as, and their home (the Erlang cookie
// rabbitmqctl needs is there).
type account struct {
	uid, gid uint32
	home     string
}

func lookupAccount() (account, error) {
	ru, err := user.Lookup("rabbitmq")
	if err != nil {
		return account{}, fmt.Errorf("no rabbitmq user (the Debian package creates it): %w", err)
	}
	uid, _ := strconv.Atoi(ru.Uid)
	gid, _ := strconv.Atoi(ru.Gid)
	if os.Geteuid() != 0 && os.Geteuid() != uid {
		return account{}, fmt.Errorf("a private RabbitMQ node runs as the rabbitmq user, so this must run as root or rabbitmq, not uid %d", os.Geteuid())
	}
	return account{uint32(uid), uint32(gid), ru.HomeDir}, nil
}

// own makes cmd run as the rabbitmq user in a process group of its own, ended with SIGTERM
// (which the server script passes on to the node) if the starting process dies first.
func (u account) own(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if os.Geteuid() == 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: u.uid, Gid: u.gid}
	}
	cmd.Env = append(cmd.Env, "HOME="+u.home)
	cmd.WaitDelay = 5 * time.Second // a grandchild holding the output open cannot hold Wait
}

// pickPorts is freePorts; tests replace it to hand a node a port already taken.
var pickPorts = freePorts

// freePorts returns n ports that were free a moment ago.
func freePorts(n int) ([]int, error) {
	var ports []int
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// Start starts a node and waits until it answers AMQP. It fails, saying why, when the package
// is missing, there is no rabbitmq user, the caller is neither root nor rabbitmq, or the node
// does not come up (with the tail of the node's own log).
func Start(cfg Config) (*Node, error) {
	if cfg.Name == "" {
		cfg.Name = "dsmproxy"
	}
	if cfg.Boot <= 0 {
		cfg.Boot = 90 * time.Second
	}
	server := filepath.Join(Bin, "rabbitmq-server")
	if _, err := os.Stat(server); err != nil {
		return nil, fmt.Errorf("rabbitmq-server is not installed (apt-get install rabbitmq-server): %w", err)
	}
	ru, err := lookupAccount()
	if err != nil {
		return nil, err
	}
	// The ports were free a moment before the node binds them; another process (a test's
	// outgoing connection on an ephemeral port) may take one meanwhile. The node then exits at
	// once, saying so, and is started again on other ports.
	for attempt := 1; ; attempt++ {
		n, err := startOnce(cfg, server, ru)
		if err == nil || attempt == maxPortAttempts || !errors.Is(err, errPortTaken) {
			return n, err
		}
	}
}

// maxPortAttempts bounds the starts of a node whose ports another process took first.
const maxPortAttempts = 3

// errPortTaken: the node exited because one of its ports was in use.
var errPortTaken = errors.New("a port the node was given was taken before it bound it")

// portTakenLog is what RabbitMQ logs when a listener's or the distribution's port is in use.
var portTakenLog = [][]byte{[]byte("dist_port_already_used"), []byte("eaddrinuse")}

// startOnce is Start on one set of free ports.
func startOnce(cfg Config, server string, ru account) (*Node, error) {
	ports, err := pickPorts(3)
	if err != nil {
		return nil, err
	}
	RemoveStale()
	dir, err := os.MkdirTemp("", dirPrefix)
	if err != nil {
		return nil, err
	}
	n := &Node{
		Name: fmt.Sprintf("%s-%d@localhost", cfg.Name, os.Getpid()),
		Addr: fmt.Sprintf("127.0.0.1:%d", ports[0]),
		dir:  dir,
		log:  filepath.Join(dir, "console.log"),
		user: ru,
	}
	if err := n.writeFiles(cfg, ports[1]); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	out, err := os.Create(n.log)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	defer out.Close()
	n.cmd = exec.Command(server)
	n.cmd.Stdout, n.cmd.Stderr = out, out
	n.cmd.Env = append(os.Environ(),
		"RABBITMQ_NODENAME="+n.Name,
		"RABBITMQ_CONF_ENV_FILE="+filepath.Join(dir, "rabbitmq-env.conf"), // not the machine's, which names its node
		"RABBITMQ_CONFIG_FILE="+filepath.Join(dir, "rabbitmq.conf"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(dir, "enabled_plugins"),
		"RABBITMQ_MNESIA_BASE="+filepath.Join(dir, "mnesia"),
		"RABBITMQ_LOG_BASE="+filepath.Join(dir, "log"),
		"RABBITMQ_PID_FILE="+filepath.Join(dir, "node.pid"),
		fmt.Sprintf("RABBITMQ_DIST_PORT=%d", ports[2]),
	)
	ru.own(n.cmd)
	if err := n.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("%s: %w", server, err)
	}
	exited := make(chan struct{})
	go func() { n.cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(cfg.Boot)
	for {
		c, err := amqp091.Dial(n.URL())
		if err == nil {
			c.Close()
			return n, nil
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(n.log)
			n.Stop()
			err := fmt.Errorf("node %s exited before it answered on %s: %s", n.Name, n.Addr, tail(b, 2000))
			if slices.ContainsFunc(portTakenLog, func(s []byte) bool { return bytes.Contains(b, s) }) {
				err = fmt.Errorf("%w: %w", errPortTaken, err)
			}
			return nil, err
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(n.log)
			n.Stop()
			return nil, fmt.Errorf("node %s did not answer on %s within %v (%v): %s", n.Name, n.Addr, cfg.Boot, err, tail(b, 2000))
		}
	}
}

// writeFiles writes the node's config, plugin list, TLS material and directories, owned by the
// rabbitmq user.
func (n *Node) writeFiles(cfg Config, tlsPort int) error {
	conf := fmt.Sprintf("listeners.tcp.local = %s\nloopback_users = none\n", n.Addr)
	files := map[string][]byte{"enabled_plugins": []byte("[].\n"), "rabbitmq-env.conf": nil}
	if cfg.TLS != nil {
		n.TLSAddr = fmt.Sprintf("127.0.0.1:%d", tlsPort)
		files["ca.pem"], files["server.crt"], files["server.key"] = cfg.TLS.CAPEM, cfg.TLS.CertPEM, cfg.TLS.KeyPEM
		conf += fmt.Sprintf(`listeners.ssl.local = %s
ssl_options.cacertfile = %s
ssl_options.certfile = %s
ssl_options.keyfile = %s
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
`, n.TLSAddr, filepath.Join(n.dir, "ca.pem"), filepath.Join(n.dir, "server.crt"), filepath.Join(n.dir, "server.key"))
	}
	files["rabbitmq.conf"] = []byte(conf)
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(n.dir, name), body, 0o600); err != nil {
			return err
		}
	}
	for _, sub := range []string{"mnesia", "log"} {
		if err := os.Mkdir(filepath.Join(n.dir, sub), 0o700); err != nil {
			return err
		}
	}
	return filepath.Walk(n.dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, int(n.user.uid), int(n.user.gid))
	})
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return bytes.TrimSpace(b)
}

// RemoveStale removes the files of nodes no longer running: a process that was killed outright
// stopped its node (SIGTERM on its death) but could not remove them.
func RemoveStale() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "node.pid"))
		pid, perr := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || perr != nil || pid <= 1 || syscall.Kill(pid, 0) != nil {
			if fi, err := os.Stat(d); err == nil && time.Since(fi.ModTime()) > 10*time.Minute {
				os.RemoveAll(d) // old enough not to be a node another process is starting
			}
		}
	}
}

// Ctl returns rabbitmqctl against the node, bounded by timeout.
func (n *Node) Ctl(ctx context.Context, timeout time.Duration, args ...string) *exec.Cmd {
	args = append([]string{"-n", n.Name, "--timeout", strconv.Itoa(int(timeout.Seconds()))}, args...)
	cmd := exec.CommandContext(ctx, filepath.Join(Bin, "rabbitmqctl"), args...)
	cmd.Env = os.Environ()
	n.user.own(cmd)
	return cmd
}

// Stop asks the node to stop, then ends whatever of its process group is left (the node's pid
// file names the Erlang process, in case it ever leaves the group), and removes its files.
func (n *Node) Stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	if n.cmd != nil && n.cmd.Process != nil {
		n.Ctl(ctx, 30*time.Second, "stop").Run()
	}
	if b, err := os.ReadFile(filepath.Join(n.dir, "node.pid")); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if n.cmd != nil && n.cmd.Process != nil {
		syscall.Kill(-n.cmd.Process.Pid, syscall.SIGKILL)
	}
	os.RemoveAll(n.dir)
}
