package amqp

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
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/dsmproxy/dsmproxy/internal/testpki"
)

// privateRabbit is a RabbitMQ node of the test run's own, beside the machine's: tests that raise
// a resource alarm or need a TLS listener run against it, so the shared broker on 5672 never
// blocks a publisher or changes its configuration. It is started by the first test that asks for
// it and stopped by TestMain.
type privateRabbit struct {
	node    string // Erlang node name, for rabbitmqctl -n
	addr    string // plain AMQP listener
	tlsAddr string // AMQP over TLS listener
	ca      *testpki.PKI
	dir     string
	cmd     *exec.Cmd
	user    rabbitUser
	log     string // the node's console output
}

var (
	privateOnce sync.Once
	privateNode *privateRabbit
	privateErr  error
)

// TestMain stops the private node, when a test started one.
func TestMain(m *testing.M) {
	code := m.Run()
	if privateNode != nil {
		privateNode.stop()
	}
	os.Exit(code)
}

// needPrivateRabbit returns the run's private node, starting it on first use; like needRabbit it
// fails rather than skips when the node cannot run.
func needPrivateRabbit(t *testing.T) *privateRabbit {
	t.Helper()
	privateOnce.Do(func() {
		privateErr = errors.New("the test that started it stopped first") // stays if a t.Fatal ends the start
		privateNode, privateErr = startPrivateRabbit(t)
	})
	if privateErr != nil {
		t.Fatalf("private RabbitMQ node: %v", privateErr)
	}
	return privateNode
}

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

// rabbitBin holds the package's own scripts. /usr/sbin's are a wrapper that, run as root, goes
// through `su`, which starts a session of its own: the node would then escape the process group
// the tests kill, and a timeout in rabbitmqctl would leave its client running.
const rabbitBin = "/usr/lib/rabbitmq/bin"

// rabbitUser is the uid and gid the node and rabbitmqctl run as, and their home (the Erlang
// cookie rabbitmqctl needs is there).
type rabbitUser struct {
	uid, gid uint32
	home     string
}

func lookupRabbitUser() (rabbitUser, error) {
	ru, err := user.Lookup("rabbitmq")
	if err != nil {
		return rabbitUser{}, fmt.Errorf("no rabbitmq user (the Debian package creates it): %w", err)
	}
	uid, _ := strconv.Atoi(ru.Uid)
	gid, _ := strconv.Atoi(ru.Gid)
	if os.Geteuid() != 0 && os.Geteuid() != uid {
		return rabbitUser{}, fmt.Errorf("the private node runs as the rabbitmq user, so the tests must run as root or rabbitmq, not uid %d", os.Geteuid())
	}
	return rabbitUser{uint32(uid), uint32(gid), ru.HomeDir}, nil
}

// asRabbit makes cmd run as the rabbitmq user in a process group of its own, ended with SIGTERM
// (which the server script passes on to the node) if the test process dies first.
func (u rabbitUser) asRabbit(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if os.Geteuid() == 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: u.uid, Gid: u.gid}
	}
	cmd.Env = append(cmd.Env, "HOME="+u.home)
	cmd.WaitDelay = 5 * time.Second // a grandchild holding the output open cannot hold Wait
}

func startPrivateRabbit(t *testing.T) (*privateRabbit, error) {
	server := filepath.Join(rabbitBin, "rabbitmq-server")
	if _, err := os.Stat(server); err != nil {
		return nil, fmt.Errorf("rabbitmq-server is not installed (apt-get install rabbitmq-server): %w", err)
	}
	// The node runs as the rabbitmq user, which must own the node's files.
	ru, err := lookupRabbitUser()
	if err != nil {
		return nil, err
	}
	uid, gid := int(ru.uid), int(ru.gid)
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	removeStaleNodeDirs()
	dir, err := os.MkdirTemp("", "dsmproxy-rabbit-")
	if err != nil {
		return nil, err
	}
	r := &privateRabbit{
		node:    fmt.Sprintf("dsmproxy-test-%d@localhost", os.Getpid()),
		addr:    fmt.Sprintf("127.0.0.1:%d", ports[0]),
		tlsAddr: fmt.Sprintf("127.0.0.1:%d", ports[1]),
		ca:      testpki.New(t, "dsmproxy private RabbitMQ CA"),
		dir:     dir,
		log:     filepath.Join(dir, "console.log"),
	}
	caFile := r.ca.WriteCA(t, dir)
	certFile, keyFile, _ := r.ca.IssueFiles(t, dir, "server", "rabbitmq")
	conf := fmt.Sprintf(`listeners.tcp.local = %s
listeners.ssl.local = %s
ssl_options.cacertfile = %s
ssl_options.certfile = %s
ssl_options.keyfile = %s
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
loopback_users = none
`, r.addr, r.tlsAddr, caFile, certFile, keyFile)
	files := map[string]string{"rabbitmq.conf": conf, "enabled_plugins": "[].\n", "rabbitmq-env.conf": ""}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			return nil, err
		}
	}
	for _, sub := range []string{"mnesia", "log"} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, err
		}
	}
	if err := filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	}); err != nil {
		return nil, err
	}
	out, err := os.Create(r.log)
	if err != nil {
		return nil, err
	}
	defer out.Close()
	r.cmd = exec.Command(server)
	r.cmd.Stdout, r.cmd.Stderr = out, out
	r.user = ru
	r.cmd.Env = append(os.Environ(),
		"RABBITMQ_NODENAME="+r.node,
		"RABBITMQ_CONF_ENV_FILE="+filepath.Join(dir, "rabbitmq-env.conf"), // not the machine's, which names its node
		"RABBITMQ_CONFIG_FILE="+filepath.Join(dir, "rabbitmq.conf"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(dir, "enabled_plugins"),
		"RABBITMQ_MNESIA_BASE="+filepath.Join(dir, "mnesia"),
		"RABBITMQ_LOG_BASE="+filepath.Join(dir, "log"),
		"RABBITMQ_PID_FILE="+filepath.Join(dir, "node.pid"),
		fmt.Sprintf("RABBITMQ_DIST_PORT=%d", ports[2]),
	)
	ru.asRabbit(r.cmd)
	if err := r.cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", server, err)
	}
	exited := make(chan struct{})
	go func() { r.cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(90 * time.Second)
	for {
		c, err := amqp091.Dial("amqp://guest:guest@" + r.addr + "/")
		if err == nil {
			c.Close()
			return r, nil
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(r.log)
			return nil, fmt.Errorf("node %s exited before it answered on %s: %s", r.node, r.addr, tail(b, 2000))
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			r.stop()
			b, _ := os.ReadFile(r.log)
			return nil, fmt.Errorf("node %s did not answer on %s within 90 s (%v): %s", r.node, r.addr, err, tail(b, 2000))
		}
	}
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return bytes.TrimSpace(b)
}

// removeStaleNodeDirs removes the files of private nodes no longer running: a test process that
// was killed outright stopped its node (SIGTERM on its death) but could not remove them.
func removeStaleNodeDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "dsmproxy-rabbit-*"))
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "node.pid"))
		pid, perr := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || perr != nil || pid <= 1 || syscall.Kill(pid, 0) != nil {
			if fi, err := os.Stat(d); err == nil && time.Since(fi.ModTime()) > 10*time.Minute {
				os.RemoveAll(d) // old enough not to be a node another test process is starting
			}
		}
	}
}

// rabbitmqctl returns rabbitmqctl against the node, bounded by timeout.
func (r *privateRabbit) rabbitmqctl(ctx context.Context, timeout time.Duration, args ...string) *exec.Cmd {
	args = append([]string{"-n", r.node, "--timeout", strconv.Itoa(int(timeout.Seconds()))}, args...)
	cmd := exec.CommandContext(ctx, filepath.Join(rabbitBin, "rabbitmqctl"), args...)
	cmd.Env = os.Environ()
	r.user.asRabbit(cmd)
	return cmd
}

// ctl runs rabbitmqctl against the node.
func (r *privateRabbit) ctl(t *testing.T, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 70*time.Second)
	defer cancel()
	if out, err := r.rabbitmqctl(ctx, time.Minute, args...).CombinedOutput(); err != nil {
		t.Fatalf("rabbitmqctl %v: %v\n%s", args, err, out)
	}
}

// stop asks the node to stop, then ends whatever of its process group is left (the node's pid
// file names the Erlang process, in case it ever leaves the group), and removes its files.
func (r *privateRabbit) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	r.rabbitmqctl(ctx, 30*time.Second, "stop").Run()
	if b, err := os.ReadFile(filepath.Join(r.dir, "node.pid")); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if r.cmd != nil && r.cmd.Process != nil {
		syscall.Kill(-r.cmd.Process.Pid, syscall.SIGKILL)
	}
	os.RemoveAll(r.dir)
}
