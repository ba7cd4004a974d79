package aws

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/credentials"
)

// upstreamReq is a request as forward builds it for the upstream client.
func upstreamReq(t *testing.T, ctx context.Context, url string, body string) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-amz-json-1.0")
	req.Header.Set("X-Amz-Target", "AmazonSQS.SendMessage")
	req.ContentLength = int64(len(body))
	return req
}

func TestUpstreamClientReusesAndRecovers(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if r.Header.Get("Content-Type") != "application/x-amz-json-1.0" || r.ContentLength != int64(len(b)) || r.Host == "" {
			http.Error(w, "bad request as sent", 400)
			return
		}
		switch r.URL.Query().Get("mode") {
		case "chunked":
			w.Write([]byte("echo:"))
			w.(http.Flusher).Flush()
			w.Write(b)
		case "close":
			w.Header().Set("Connection", "close")
			w.Write(append([]byte("echo:"), b...))
		default:
			w.Write(append([]byte("echo:"), b...))
		}
	}))
	defer srv.Close()
	u := newUpstreamClient()
	defer u.close()
	ctx := context.Background()
	send := func(mode, body string) string {
		t.Helper()
		resp, rb, err := u.do(upstreamReq(t, ctx, srv.URL+"/?mode="+mode, body), []byte(body), 1<<20)
		if err != nil {
			t.Fatalf("%s: %v", mode, err)
		}
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d %s", mode, resp.StatusCode, rb)
		}
		return string(rb)
	}
	for _, mode := range []string{"plain", "plain", "chunked", "chunked", "close", "plain"} {
		if got := send(mode, `{"m":"`+mode+`"}`); got != `echo:{"m":"`+mode+`"}` {
			t.Fatalf("%s: got %q", mode, got)
		}
	}
	u.mu.Lock()
	idle := 0
	for _, cs := range u.idle {
		idle += len(cs)
	}
	u.mu.Unlock()
	if idle != 1 {
		t.Fatalf("%d idle connections after sequential requests, want 1 (reused)", idle)
	}
	// The server closes the idle connection: the next request goes out again on a new one.
	srv.CloseClientConnections()
	if got := send("plain", "after-close"); got != "echo:after-close" {
		t.Fatalf("after the server closed the idle connection: %q", got)
	}
}

func TestUpstreamClientLimitAndCancel(t *testing.T) {
	release, hanging := make(chan struct{}), make(chan struct{}, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("mode") == "hang" {
			hanging <- struct{}{}
			select {
			case <-release:
			case <-r.Context().Done():
			}
			return
		}
		w.Write([]byte(strings.Repeat("x", 100)))
	}))
	defer srv.Close()
	defer close(release)
	u := newUpstreamClient()
	defer u.close()
	// a body over the limit is returned cut at limit+1, and its connection is not kept
	_, rb, err := u.do(upstreamReq(t, context.Background(), srv.URL, ""), nil, 10)
	if err != nil || len(rb) != 11 {
		t.Fatalf("over the limit: %d bytes, %v; want 11", len(rb), err)
	}
	u.mu.Lock()
	n := len(u.idle)
	u.mu.Unlock()
	if n != 0 {
		t.Fatal("a connection with an unread body was kept")
	}
	// the client's context ends while the upstream has not answered
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, _, err := u.do(upstreamReq(t, ctx, srv.URL+"/?mode=hang", "x"), []byte("x"), 1<<20)
		done <- err
	}()
	<-hanging // the request reached the upstream, which does not answer
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled request: %v, want context.Canceled", err)
	}
	// header values that would split the request are refused
	req := upstreamReq(t, context.Background(), srv.URL, "")
	req.Header.Set("X-Amzn-Trace-Id", "a\r\nX-Evil: 1")
	if _, _, err := u.do(req, nil, 1<<20); err == nil {
		t.Fatal("a header value with CRLF was sent")
	}
}

func TestUpstreamClientTLS(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Write(append([]byte(r.Proto+":"), b...))
	}))
	defer srv.Close()
	u := newUpstreamClient()
	defer u.close()
	conf := srv.Client().Transport.(*http.Transport).TLSClientConfig
	u.tlsConfig = func() *tls.Config { return conf }
	for i := 0; i < 2; i++ {
		_, rb, err := u.do(upstreamReq(t, context.Background(), srv.URL, "hello"), []byte("hello"), 1<<20)
		if err != nil || string(rb) != "HTTP/1.1:hello" {
			t.Fatalf("over TLS: %q, %v", rb, err)
		}
	}
}

// TestServiceUpstreams: a regional AWS endpoint given for one service sends each other service
// to its own endpoint in that region; any other URL serves all three; Upstreams overrides both.
func TestServiceUpstreams(t *testing.T) {
	for _, tc := range []struct {
		upstream  string
		upstreams map[string]string
		want      map[string]string
	}{
		{"https://sqs.us-east-1.amazonaws.com", nil, map[string]string{
			"sqs": "https://sqs.us-east-1.amazonaws.com", "sns": "https://sns.us-east-1.amazonaws.com", "kinesis": "https://kinesis.us-east-1.amazonaws.com"}},
		{"https://kinesis-fips.us-gov-west-1.amazonaws.com", nil, map[string]string{
			"sqs": "https://sqs-fips.us-gov-west-1.amazonaws.com", "sns": "https://sns-fips.us-gov-west-1.amazonaws.com", "kinesis": "https://kinesis-fips.us-gov-west-1.amazonaws.com"}},
		{"https://sns.cn-north-1.amazonaws.com.cn", nil, map[string]string{
			"sqs": "https://sqs.cn-north-1.amazonaws.com.cn", "sns": "https://sns.cn-north-1.amazonaws.com.cn", "kinesis": "https://kinesis.cn-north-1.amazonaws.com.cn"}},
		{"http://127.0.0.1:4566", nil, map[string]string{
			"sqs": "http://127.0.0.1:4566", "sns": "http://127.0.0.1:4566", "kinesis": "http://127.0.0.1:4566"}},
		{"https://vpce-1a2b.sqs.us-east-1.vpce.amazonaws.com", nil, map[string]string{
			"sqs": "https://vpce-1a2b.sqs.us-east-1.vpce.amazonaws.com", "sns": "https://vpce-1a2b.sqs.us-east-1.vpce.amazonaws.com", "kinesis": "https://vpce-1a2b.sqs.us-east-1.vpce.amazonaws.com"}},
		{"https://sqs.us-east-1.amazonaws.com", map[string]string{"sns": "http://127.0.0.1:9911"}, map[string]string{
			"sqs": "https://sqs.us-east-1.amazonaws.com", "sns": "http://127.0.0.1:9911", "kinesis": "https://kinesis.us-east-1.amazonaws.com"}},
		{"", nil, map[string]string{
			"sqs": "https://sqs.eu-west-1.amazonaws.com", "sns": "https://sns.eu-west-1.amazonaws.com", "kinesis": "https://kinesis.eu-west-1.amazonaws.com"}},
	} {
		p, err := New(Config{Listen: "127.0.0.1:0", Upstream: tc.upstream, Upstreams: tc.upstreams, Region: "eu-west-1",
			Credentials: credentials.NewStaticCredentialsProvider(testKey, testSecret, "")})
		if err != nil {
			t.Fatalf("%s: %v", tc.upstream, err)
		}
		for svc, want := range tc.want {
			if got := p.up[svc].String(); got != want {
				t.Errorf("upstream %q: %s goes to %s, want %s", tc.upstream, svc, got, want)
			}
		}
	}
}
