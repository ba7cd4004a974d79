package aws

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials/processcreds"
)

// TestMissingCredentialsAreAProblem: a front that cannot load its own AWS credentials answers
// every request 502, so it must not look ready: Problem (what GET /readyz shows) says so while
// the credentials are missing, and nothing once they can be loaded again, without a client's
// request in between. Against local-aws-sqs, with the credentials a credential_process reads
// from a file that appears only later.
func TestMissingCredentialsAreAProblem(t *testing.T) {
	up := sqsPeer(t)
	file := filepath.Join(t.TempDir(), "creds.json")
	tp := startProxy(t, func(c *Config) {
		c.Upstream = up.URL()
		c.TrustClients = true
		c.Credentials = processcreds.NewProvider("cat " + file)
	})
	var body string
	listQueues := func() int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, tp.url+"/", strings.NewReader("{}"))
		req.Header.Set("X-Amz-Target", "AmazonSQS.ListQueues")
		req.Header.Set("Content-Type", "application/x-amz-json-1.0")
		var st int
		st, _, body = do(t, req)
		return st
	}
	// The load at start fails (no file); the problem shows once it has.
	waitFor(t, "Problem to report the missing credentials", func() bool { return tp.Problem() != nil })
	if err := tp.Problem(); !strings.Contains(err.Error(), "cannot load its own AWS credentials") {
		t.Errorf("Problem: %v", err)
	}
	if st := listQueues(); st != http.StatusBadGateway {
		t.Errorf("ListQueues without the proxy's credentials: %d, want 502", st)
	}
	// The upstream was never tried: the answer and the line say what failed.
	if strings.Contains(body, "could not reach") || !strings.Contains(body, "could not sign") {
		t.Errorf("the 502 for want of the proxy's own credentials says %q, want that it could not sign the request", body)
	}
	if tp.Problem() == nil {
		t.Error("no problem after a request failed for want of credentials")
	}
	// The credentials appear; no client asks meanwhile: Problem's own loads find them.
	js := fmt.Sprintf(`{"Version":1,"AccessKeyId":%q,"SecretAccessKey":%q}`, testKey, testSecret)
	if err := os.WriteFile(file, []byte(js), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "Problem to clear once the credentials load", func() bool { return tp.Problem() == nil })
	if st := listQueues(); st != http.StatusOK {
		t.Errorf("ListQueues with the proxy's credentials back: %d, want 200", st)
	}
}

// TestMissingCredentialsProblemSaysRefused: where the front verifies signatures (the default),
// a front without its own credentials cannot verify them, and refuses a signed request with 403
// InvalidClientTokenId: Problem (GET /readyz) must say so, not only "502", which that client
// never sees. Against local-aws-sqs, with a credential_process that finds no file.
func TestMissingCredentialsProblemSaysRefused(t *testing.T) {
	up := sqsPeer(t)
	file := filepath.Join(t.TempDir(), "creds.json")
	tp := startProxy(t, func(c *Config) {
		c.Upstream = up.URL()
		c.Credentials = processcreds.NewProvider("cat " + file)
	})
	waitFor(t, "Problem to report the missing credentials", func() bool { return tp.Problem() != nil })
	st, _, body := do(t, signedRaw(t, tp.url+"/", "AmazonSQS.ListQueues", "{}", time.Now(), ""))
	if st != http.StatusForbidden || !strings.Contains(body, "InvalidClientTokenId") {
		t.Errorf("a signed ListQueues without the proxy's credentials: %d %s, want 403 InvalidClientTokenId", st, body)
	}
	err := tp.Problem()
	if err == nil {
		t.Fatal("no problem after a request was refused for want of credentials")
	}
	for _, want := range []string{"cannot load its own AWS credentials", "403 InvalidClientTokenId", "502"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Problem %q does not say %q", err, want)
		}
	}
}
