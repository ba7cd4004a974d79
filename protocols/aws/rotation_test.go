package aws

import (
	"context"
	"sync"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
)

// rotatingCreds stands for an instance role (IMDS) or an ECS task role: temporary credentials
// the proxy and its client on the same host both load, each refreshing on its own schedule.
// Each Retrieve gives the current pair; rotate makes the next one current.
type rotatingCreds struct {
	mu   sync.Mutex
	sets []awssdk.Credentials
	cur  int
	n    int // Retrieve calls
}

func (r *rotatingCreds) Retrieve(context.Context) (awssdk.Credentials, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n++
	return r.sets[r.cur], nil
}

func (r *rotatingCreds) rotate() {
	r.mu.Lock()
	r.cur++
	r.mu.Unlock()
}

// oldRoleCreds are the role's credentials before a rotation, newRoleCreds after it; the new pair
// is the one the upstream check knows, since the proxy signs with it once it has it.
func roleCreds(now time.Time) (oldCreds, newCreds awssdk.Credentials) {
	oldCreds = awssdk.Credentials{AccessKeyID: "ASIAROTATEDOLD000001", SecretAccessKey: "old-role-secret",
		SessionToken: "old-role-token", CanExpire: true, Expires: now.Add(time.Hour)}
	newCreds = awssdk.Credentials{AccessKeyID: testKey, SecretAccessKey: testSecret,
		SessionToken: proxyRoleToken, CanExpire: true, Expires: now.Add(6 * time.Hour)}
	return oldCreds, newCreds
}

// TestRotatedRoleCredentialsAccepted: a client that signs with the role credentials the proxy
// verifies against (its own, from the same instance or task role) keeps working across a
// rotation of those credentials, as it does going to SQS directly, which takes both pairs until
// the old one expires. The proxy and its client refresh at different moments, in either order:
// the proxy first (its cache refreshes minutes before expiry; the client still signs with the old
// pair, which has not expired), or the client first (it already signs with a pair the proxy has
// not loaded yet). Both used to be refused as InvalidClientTokenId, which the SDKs do not retry:
// every send failed until the other side refreshed too.
func TestRotatedRoleCredentialsAccepted(t *testing.T) {
	oldC, newC := roleCreds(time.Now())
	for _, tc := range []struct {
		name string
		// the proxy's credentials when the client sends, and the pair the client signs with
		proxyRotated bool
		client       awssdk.Credentials
	}{
		{"proxy refreshed first, client on the old pair", true, oldC},
		{"client refreshed first, proxy on the old pair", false, newC},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc := &rotatingCreds{sets: []awssdk.Credentials{oldC, newC}}
			up := sqsPeer(t)
			tp := startProxy(t, func(c *Config) {
				c.Upstream = up.URL()
				c.Credentials = rc
				c.ClientKeys = nil
			})
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			// The proxy loads the old pair first (as at start).
			waitFor(t, "the proxy to load its credentials", func() bool {
				rc.mu.Lock()
				defer rc.mu.Unlock()
				return rc.n > 0
			})
			if tp.Problem() != nil {
				t.Fatal(tp.Problem())
			}
			// Retrieve has returned, but the cache may not have stored the pair yet: an Invalidate
			// then would be undone, or the next Retrieve join that first load. This one waits it out.
			if got, err := tp.creds.Retrieve(ctx); err != nil || got.AccessKeyID != oldC.AccessKeyID {
				t.Fatalf("proxy credentials at start: %v %v", got.AccessKeyID, err)
			}
			if tc.proxyRotated {
				// The proxy's cache refreshes (early, before expiry) and gets the new pair.
				rc.rotate()
				tp.creds.(*awssdk.CredentialsCache).Invalidate()
				if got, err := tp.creds.Retrieve(ctx); err != nil || got.AccessKeyID != newC.AccessKeyID {
					t.Fatalf("proxy credentials after the refresh: %v %v", got.AccessKeyID, err)
				}
			} else {
				// The role's credentials rotate; the client has them, the proxy's cache does not yet.
				rc.rotate()
			}
			cl := sqs.New(sqs.Options{Region: "us-east-1", BaseEndpoint: awssdk.String(tp.url), AppID: "orders-api",
				Credentials: credentials.NewStaticCredentialsProvider(tc.client.AccessKeyID, tc.client.SecretAccessKey, tc.client.SessionToken)})
			cq, err := cl.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: awssdk.String("rotation")})
			if err != nil {
				t.Fatalf("CreateQueue signed with %s: %v", tc.client.AccessKeyID, err)
			}
			if _, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: cq.QueueUrl, MessageBody: awssdk.String("after rotation")}); err != nil {
				t.Fatalf("SendMessage signed with %s: %v", tc.client.AccessKeyID, err)
			}
			if bad := up.failures(); len(bad) > 0 {
				t.Fatalf("upstream signature failures: %v", bad)
			}
			assertChainedCounts(t, tp, "sqs", "rotation", 1, 0)
		})
	}
}
