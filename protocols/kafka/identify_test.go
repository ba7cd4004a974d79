package kafka

import (
	"bufio"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
)

// TestClientIdentifiedWithSoftware: the "kafka client identified" line names the client
// software its ApiVersions request sent (kgo's is "kgo"), not "". The client.id in that
// request's header used to be noted first, and the line logged then, before the software name
// in the same request's body was read; the name was learned right after, with no line.
func TestClientIdentifiedWithSoftware(t *testing.T) {
	c, guard := startCluster(t)
	var logs syncbuf.Buffer
	p := startProxy(t, c, func(cfg *Config) { cfg.Log = zerolog.New(&logs).Level(zerolog.InfoLevel) })
	cl := kgoClient(t, p, kgo.ClientID("orders-api-3"))
	produceKgo(t, testCtx(t), cl, uniqueTopic(t, "identified"), testRecords(1, time.UnixMilli(1700000760000)))

	var lines []map[string]any
	sc := bufio.NewScanner(strings.NewReader(logs.String()))
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil && m["message"] == "kafka client identified" {
			lines = append(lines, m)
		}
	}
	if len(lines) == 0 {
		t.Fatalf("no \"kafka client identified\" line; logs:\n%s", logs.String())
	}
	for _, l := range lines {
		if l["client_id"] != "orders-api-3" || l["software"] != "kgo" || l["service"] != "orders-api" {
			t.Errorf("identified as client_id %q, software %q, service %q; want orders-api-3, kgo, orders-api", l["client_id"], l["software"], l["service"])
		}
	}
	guard.check(t)
}
