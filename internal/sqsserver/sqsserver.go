// Package sqsserver runs goaws's SQS server (github.com/Admiral-Piett/goaws) inside this process
// on a loopback port: the demo's SQS broker, and a peer for tests that need an SQS server without
// Node.js. goaws keeps its queues in package variables, so a process runs one Server at a time.
package sqsserver

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/Admiral-Piett/goaws/app/gosqs"
	"github.com/Admiral-Piett/goaws/app/models"
	"github.com/Admiral-Piett/goaws/app/router"
	"github.com/sirupsen/logrus"
)

// AccountID is the account in the queue URLs the server hands out.
const AccountID = "000000000000"

// Server is a running goaws; both SQS wire forms (JSON and Query) are served.
type Server struct {
	srv  *http.Server
	ln   net.Listener
	quit chan bool
}

// Start listens on 127.0.0.1 (a free port) with no queues.
func Start() (*Server, error) {
	// goaws logs every request through logrus's standard logger; nothing else here uses logrus.
	logrus.SetOutput(io.Discard)
	logrus.SetLevel(logrus.PanicLevel)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("in-process SQS server: %w", err)
	}
	host, port, _ := net.SplitHostPort(ln.Addr().String())
	// Queue URLs: http://127.0.0.1:<port>/000000000000/<queue>. Queues an earlier Server of this
	// process left are dropped.
	models.SyncQueues.Lock()
	models.CurrentEnvironment = models.Environment{Host: host, Port: port, AccountID: AccountID,
		// what goaws's own config loader defaults to (30 s visibility, 256 KiB, 4 days)
		QueueAttributeDefaults: models.EnvQueueAttributes{VisibilityTimeout: 30, MaximumMessageSize: 256 << 10, MessageRetentionPeriod: 4 * 24 * 3600}}
	models.SyncQueues.Queues = map[string]*models.Queue{}
	models.SyncQueues.Unlock()
	s := &Server{ln: ln, quit: make(chan bool),
		srv: &http.Server{Handler: awsBatchShape(router.New()), ReadHeaderTimeout: 10 * time.Second}}
	go func() { _ = s.srv.Serve(ln) }()
	go gosqs.PeriodicTasks(time.Second, s.quit) // makes unacknowledged messages visible again
	return s, nil
}

// URL is the server's endpoint.
func (s *Server) URL() string { return "http://" + s.ln.Addr().String() }

// Close stops the server.
func (s *Server) Close() {
	close(s.quit)
	_ = s.srv.Close()
}

// awsBatchShape fixes the one goaws v0.5.4 JSON answer in a non-AWS shape: SendMessageBatch
// returns {"SendMessageBatchResultEntry":[…],"BatchResultErrorEntry":[…]} (its Query XML names)
// where AWS's JSON protocol has {"Successful":[…],"Failed":[…]}. Left as it is, an SDK sees
// neither a success nor a failure and the proxy, which reads Successful, records no produce
// checkpoint for batch entries. Every other answer passes through untouched, errors included.
func awsBatchShape(next http.Handler) http.Handler {
	rename := map[string]string{"SendMessageBatchResultEntry": "Successful", "BatchResultErrorEntry": "Failed"}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Amz-Target") != "AmazonSQS.SendMessageBatch" {
			next.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		var m map[string]json.RawMessage
		if rec.Code/100 == 2 && json.Unmarshal(body, &m) == nil {
			for from, to := range rename {
				if v, ok := m[from]; ok {
					delete(m, from)
					m[to] = v
				}
			}
			if b, err := json.Marshal(m); err == nil {
				body = b
			}
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.Header().Del("Content-Length")
		w.WriteHeader(rec.Code)
		_, _ = w.Write(body)
	})
}
