package kafka

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"
)

// kcatPath finds kcat (librdkafka 2.0.2 on Debian) or fails the test saying how to install it.
func kcatPath(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("kcat")
	if err != nil {
		t.Fatalf("kcat (librdkafka-based client) is required: install it with `apt-get install -y kcat` (%v)", err)
	}
	return path
}

func runKcat(t *testing.T, ctx context.Context, stdin string, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, kcatPath(t), args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("kcat %v: %v\nstderr: %s", args, err, errb.String())
	}
	return out.String()
}

// TestKcat produces and consumes with kcat in every codec it is asked for. librdkafka 2.0.2
// enables gzip, snappy and lz4 only with a broker that accepts Produce v0, which kfake (as Kafka
// 4.0) does not, so those cells send uncompressed batches; TestEveryClientCodecReachesTheBrokerCompressed
// checks at the broker that kcat's zstd batches arrive compressed.
func TestKcat(t *testing.T) {
	c, guard := startCluster(t)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	for _, tc := range []struct {
		codec      string
		idempotent bool
	}{{"none", false}, {"gzip", false}, {"snappy", false}, {"lz4", true}, {"zstd", false}} {
		t.Run(tc.codec, func(t *testing.T) {
			topic := uniqueTopic(t, "kcat-"+tc.codec)
			const n = 10
			var in strings.Builder
			for i := 0; i < n; i++ {
				fmt.Fprintf(&in, "k%d:value-%d\n", i, i)
			}
			args := []string{"-P", "-b", p.Addr().String(), "-t", topic, "-K:", "-z", tc.codec,
				"-H", "h1=v1", "-H", "trace=xyz", "-X", "client.id=kcat-producer", "-X", "allow.auto.create.topics=true"}
			if tc.idempotent {
				args = append(args, "-X", "enable.idempotence=true")
			}
			runKcat(t, ctx, in.String(), args...)
			group := "kcat-" + tc.codec
			out := runKcat(t, ctx, "", "-C", "-b", p.Addr().String(), "-G", group, "-c", fmt.Sprint(n),
				"-X", "auto.offset.reset=earliest", "-X", "client.id=kcat-consumer",
				"-f", "%k|%s|%h|%p|%o\n", topic)
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if len(lines) != n {
				t.Fatalf("kcat consumed %d lines, want %d:\n%s", len(lines), n, out)
			}
			seen := map[string]bool{}
			var got []*kgo.Record
			for _, l := range lines {
				f := strings.Split(l, "|")
				if len(f) != 5 {
					t.Fatalf("bad kcat line %q", l)
				}
				seen[f[0]+":"+f[1]] = true
				part, _ := strconv.Atoi(f[3])
				off, _ := strconv.ParseInt(f[4], 10, 64)
				got = append(got, &kgo.Record{Partition: int32(part), Offset: off})
				hs := strings.Split(f[2], ",")
				nctx := 0
				var orig []string
				for _, h := range hs {
					if strings.HasPrefix(h, "dd-pathway-ctx-base64=") {
						nctx++
						continue
					}
					orig = append(orig, h)
				}
				if strings.Join(orig, ",") != "h1=v1,trace=xyz" || nctx != wantInjected {
					t.Errorf("record %s headers %q: want h1=v1,trace=xyz plus %d pathway header", f[0], f[2], wantInjected)
				}
			}
			for i := 0; i < n; i++ {
				if !seen[fmt.Sprintf("k%d:value-%d", i, i)] {
					t.Errorf("record k%d not consumed", i)
				}
			}
			checkBacklogs(t, p, topic, group, got)
			checkConsumeGroup(t, p, topic, group, n)
			checkChain(t, p, topic, group, "kcat-producer", n)
		})
	}
	guard.check(t)
}
