package aws

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
	"github.com/dsmproxy/dsmproxy/proxy"
)

// TestClientIdentifiedLogged: the AWS front says at Info, once per client, which service it
// named it and from what (access key, app id), as the Kafka and AMQP fronts do for theirs: a
// person setting up services rules for the AWS clients of a pipeline (aws-sdk-go-v2 with an app
// id, one signing with a key a rule names, one with neither) otherwise had nothing to check them
// by until their checkpoints reached /dsm.
func TestClientIdentifiedLogged(t *testing.T) {
	up := sqsPeer(t)
	var logs syncbuf.Buffer
	tp := startProxy(t, func(c *Config) {
		c.Upstream, c.Log = up.URL(), zerolog.New(&logs)
		c.Services = &proxy.Services{Default: "svc-default", Rules: []proxy.ServiceRule{{Service: "receiver", AccessKey: otherKey}}}
	})
	client := func(key, secret, app string) *sqs.Client {
		return sqs.New(sqs.Options{Region: "us-east-1", BaseEndpoint: awssdk.String(tp.url), AppID: app,
			Credentials: credentials.NewStaticCredentialsProvider(key, secret, "")})
	}
	for _, tc := range []struct {
		name, key, secret, app, service string
	}{
		{"an app id", testKey, testSecret, "shipping", "shipping"},
		{"a rule on the access key", otherKey, otherSec, "", "receiver"},
		{"neither", testKey, testSecret, "", "svc-default"},
	} {
		cl := client(tc.key, tc.secret, tc.app)
		for range 3 { // one line per client, not per request
			if _, err := cl.ListQueues(context.Background(), &sqs.ListQueuesInput{}); err != nil {
				t.Fatalf("%s: ListQueues: %v", tc.name, err)
			}
		}
		var lines []map[string]string
		for _, line := range strings.Split(logs.String(), "\n") {
			var raw map[string]any
			if json.Unmarshal([]byte(line), &raw) != nil {
				continue
			}
			m := map[string]string{}
			for k, v := range raw {
				m[k] = fmt.Sprint(v)
			}
			if m["message"] == "aws client identified" && m["service"] == tc.service {
				lines = append(lines, m)
			}
		}
		if len(lines) != 1 {
			t.Errorf("%s: %d lines 'aws client identified' naming service %s, want 1:\n%s", tc.name, len(lines), tc.service, logs.String())
			continue
		}
		if l := lines[0]; l["access_key"] != tc.key || l["app_id"] != tc.app || !strings.HasPrefix(l["client"], "127.0.0.1") || !strings.HasPrefix(l["sdk"], "aws-sdk-go-v2/") {
			t.Errorf("%s: line %v, want access_key %s, app_id %q, client 127.0.0.1 and the SDK", tc.name, l, tc.key, tc.app)
		}
	}
}
