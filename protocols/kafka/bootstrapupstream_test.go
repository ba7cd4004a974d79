package kafka

import (
	"bufio"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/dsmproxy/dsmproxy/internal/closedport"
	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
)

// TestBootstrapConnLogsDialedBroker: a bootstrap-listener connection's log lines name, as
// `upstream`, the bootstrap broker it reached. The field used to be the first bootstrap address
// whichever broker the rotating dial reached, so a line said "upstream 9092" over an error read
// from 9093; here the first address is a closed port that no connection can have reached.
func TestBootstrapConnLogsDialedBroker(t *testing.T) {
	c, guard := startCluster(t)
	dead := closedport.New(t).Addr()
	var logs syncbuf.Buffer
	p := startProxy(t, c, func(cfg *Config) {
		cfg.Bootstrap = append([]string{dead}, cfg.Bootstrap...)
		cfg.Log = zerolog.New(&logs).Level(zerolog.DebugLevel)
	})
	for i := range 3 { // the dial starts from a rotating index: three connections start at each address
		cl := kgoClient(t, p, kgo.ClientID("walker"))
		produceKgo(t, testCtx(t), cl, uniqueTopic(t, "dialed"), testRecords(1, time.UnixMilli(1700000760000+int64(i))))
		cl.Close()
	}

	live := c.ListenAddrs()
	seen := 0
	sc := bufio.NewScanner(strings.NewReader(logs.String()))
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) != nil || m["conn"] == nil || m["node"] != nil || m["listen"] != p.Addr().String() {
			continue // not a bootstrap-listener connection's line
		}
		seen++
		if up, _ := m["upstream"].(string); !slices.Contains(live, up) {
			t.Errorf("bootstrap connection %v logged upstream %q, not a broker it can have reached (%v): %q", m["conn"], up, live, m["message"])
		}
	}
	if seen == 0 {
		t.Fatalf("no bootstrap connection line; logs:\n%s", logs.String())
	}
	guard.check(t)
}
