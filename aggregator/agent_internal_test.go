package aggregator

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/dsmproxy/dsmproxy/internal/agenttest"
	"github.com/dsmproxy/dsmproxy/pathway"
)

// retrySink is a sink to agent whose backoff waits are recorded instead of slept; onSleep runs at
// each wait with its 1-based number.
func retrySink(t *testing.T, agent *agenttest.Agent, retries int, onSleep func(n int)) (*AgentSink, *[]time.Duration) {
	t.Helper()
	s, err := NewAgentSink(AgentConfig{URL: agent.URL(), TracerVersion: "test", Retries: retries, Backoff: time.Second, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	var waits []time.Duration
	s.sleep = func(ctx context.Context, d time.Duration) error {
		waits = append(waits, d)
		onSleep(len(waits))
		return ctx.Err()
	}
	return s, &waits
}

func oneBucket() []Bucket {
	a := New(Config{})
	a.Add(pathway.Point{Service: "s", Hash: 1, Time: time.Unix(1700000000, 0).UnixNano(), EdgeLatency: int64(time.Millisecond)})
	a.Close()
	return a.Flush(time.Time{}, true)
}

// TestRetryBackoff: 5xx answers are retried with doubling waits capped at 2 s, and the payload is
// delivered once the Agent answers 202.
func TestRetryBackoff(t *testing.T) {
	agent := agenttest.New(t)
	agent.SetStatus(http.StatusServiceUnavailable)
	s, waits := retrySink(t, agent, 5, func(n int) {
		if n == 3 {
			agent.SetStatus(http.StatusAccepted)
		}
	})
	if err := s.Send(context.Background(), oneBucket()); err != nil {
		t.Fatal(err)
	}
	want := []time.Duration{time.Second, 2 * time.Second, 2 * time.Second}
	if len(*waits) != len(want) {
		t.Fatalf("waits %v, want %v", *waits, want)
	}
	for i := range want {
		if (*waits)[i] != want[i] {
			t.Errorf("wait %d = %v, want %v", i, (*waits)[i], want[i])
		}
	}
	if st := s.Stats(); st.Failed != 3 || st.Payloads != 1 || st.Pending != 0 || agent.Posts() != 4 || len(agent.Points()) != 2 {
		t.Fatalf("stats %+v, %d posts, %d points", st, agent.Posts(), len(agent.Points()))
	}
}

// TestRetryWithinDeadline: retries stop when the next wait would pass the flush's deadline, and
// the payload stays pending for the next flush.
func TestRetryWithinDeadline(t *testing.T) {
	agent := agenttest.New(t)
	agent.SetStatus(http.StatusBadGateway)
	s, waits := retrySink(t, agent, 10, func(int) {})
	// A generous deadline, so a slow machine still fits the first 1 s wait but never the second 2 s one.
	ctx, cancel := context.WithTimeout(context.Background(), 1900*time.Millisecond)
	defer cancel()
	if err := s.Send(ctx, oneBucket()); err == nil {
		t.Fatal("Send to a failing Agent returned no error")
	}
	if len(*waits) > 1 {
		t.Errorf("waits %v beyond the deadline", *waits)
	}
	if st := s.Stats(); st.Pending != 1 || st.Payloads != 0 {
		t.Fatalf("stats %+v; want the payload pending", st)
	}
}

// TestOversizePayload: a payload larger than the whole pending bound is dropped alone; the ones
// already waiting stay.
func TestOversizePayload(t *testing.T) {
	agent := agenttest.New(t, agenttest.Down())
	s, _ := retrySink(t, agent, -1, func(int) {})
	_ = s.Send(context.Background(), oneBucket())
	st := s.Stats()
	if st.Pending != 1 {
		t.Fatalf("stats %+v; want one pending", st)
	}
	s.cfg.MaxPendingBytes = st.PendingBytes + 1 // room for the waiting one, not for a second one
	big := oneBucket()
	for i := range 50 {
		big[0].Groups = append(big[0].Groups, Group{Service: "s", Hash: uint64(i + 10), PathwayLatency: big[0].Groups[0].PathwayLatency,
			EdgeLatency: big[0].Groups[0].EdgeLatency, PayloadSize: big[0].Groups[0].PayloadSize})
	}
	_ = s.Send(context.Background(), big)
	if st := s.Stats(); st.Pending != 1 || st.Dropped != 1 {
		t.Fatalf("stats %+v; want the old payload pending and the oversize one dropped", st)
	}
}

// TestCompactInts: integers go out in their shortest msgpack form, as the Go tracer's msgp
// writes them, and large hashes as uint64.
func TestCompactInts(t *testing.T) {
	p := statsPayload{Stats: []statsBucket{{Duration: 10e9, Stats: []statsPoint{{Hash: 5, ParentHash: 1 << 63}}, Backlogs: []backlog{{Value: 200}}}}}
	var enc payloadEncoder
	body, err := enc.encode(&p)
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(zr)
	for _, want := range []string{
		"\xa4Hash\x05", "\xaaParentHash\xcf\x80\x00\x00\x00\x00\x00\x00\x00", "\xa5Value\xd1\x00\xc8", "\xa8Duration\xcf\x00\x00\x00\x02\x54\x0b\xe4\x00",
	} {
		if !bytes.Contains(raw, []byte(want)) {
			t.Errorf("payload lacks %q", want)
		}
	}
}

// TestBacklogValueSigned: Backlog.Value takes msgp's WriteInt64 forms, the Go tracer's bytes
// (payload_msgp.go), which are signed where vmihailenco's compact ints are unsigned.
func TestBacklogValueSigned(t *testing.T) {
	for _, tc := range []struct {
		v    int64
		want string
	}{
		{0, "\x00"},
		{127, "\x7f"},
		{128, "\xd1\x00\x80"},
		{200, "\xd1\x00\xc8"},
		{32767, "\xd1\x7f\xff"},
		{32768, "\xd2\x00\x00\x80\x00"},
		{70000, "\xd2\x00\x01\x11\x70"},
		{math.MaxInt32, "\xd2\x7f\xff\xff\xff"},
		{math.MaxInt32 + 1, "\xd3\x00\x00\x00\x00\x80\x00\x00\x00"},
		{-1, "\xff"},
		{-32, "\xe0"},
		{-33, "\xd0\xdf"},
		{-129, "\xd1\xff\x7f"},
	} {
		got, err := msgpack.Marshal(signedInt64(tc.v))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != tc.want {
			t.Errorf("%d: % x, want % x", tc.v, got, tc.want)
		}
		var back int64
		if err := msgpack.Unmarshal(got, &back); err != nil || back != tc.v {
			t.Errorf("%d: decoded %d, %v", tc.v, back, err)
		}
	}
}

// TestUnansweredPayloadNotResent: the Agent takes a payload and does not answer before the
// flush gives up, at its deadline or cancelled by a shutdown. The payload is dropped and counted,
// not sent again with the next flush, which would count its buckets twice; later payloads go as
// usual. An Agent that cannot be reached at all keeps payloads pending (TestAgentDown), and one
// that answers 5xx gets them again (TestRetryBackoff).
func TestUnansweredPayloadNotResent(t *testing.T) {
	for _, tc := range []struct {
		name   string
		giveUp func(agent *agenttest.Agent) (context.Context, context.CancelFunc)
	}{
		{"deadline", expiresOncePosted},
		{"shutdown", func(agent *agenttest.Agent) (context.Context, context.CancelFunc) {
			// Cancelled once the Agent has the post; the timeout only bounds a broken test.
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			go func() {
				for agent.Posts() == 0 && ctx.Err() == nil {
					time.Sleep(5 * time.Millisecond)
				}
				cancel()
			}()
			return ctx, cancel
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			agent := agenttest.New(t)
			s, waits := retrySink(t, agent, 5, func(int) {})
			release := agent.HoldAnswers()
			defer release()
			ctx, cancel := tc.giveUp(agent)
			defer cancel()
			if err := s.Send(ctx, oneBucket()); err != nil {
				t.Fatalf("Send = %v; an unanswered payload is dropped, not an error", err)
			}
			if tc.name == "shutdown" && !errors.Is(ctx.Err(), context.Canceled) {
				t.Fatalf("the flush ended by %v, not by the cancel", ctx.Err())
			}
			if st := s.Stats(); st.Unconfirmed != 1 || st.Pending != 0 || st.Payloads != 0 || st.Failed != 0 {
				t.Fatalf("stats %+v; want the payload unconfirmed and not pending", st)
			}
			if len(*waits) != 0 {
				t.Fatalf("retried %d times", len(*waits))
			}
			release()
			if err := s.Send(context.Background(), oneBucket()); err != nil {
				t.Fatal(err)
			}
			if got := agent.Posts(); got != 2 {
				t.Fatalf("the Agent got %d posts, want 2: the unanswered payload must not be sent again", got)
			}
			if st := s.Stats(); st.Payloads != 1 || st.Unconfirmed != 1 || st.Pending != 0 {
				t.Fatalf("stats %+v; want the second payload accepted", st)
			}
		})
	}
}

// TestExpiredFlushLeavesTheRest: once a payload goes unanswered until the flush's deadline, the
// payloads behind it wait for the next flush without counting as failures.
func TestExpiredFlushLeavesTheRest(t *testing.T) {
	agent := agenttest.New(t)
	s, _ := retrySink(t, agent, 5, func(int) {})
	two := append(oneBucket(), oneBucket()...)
	two[1].Groups[0].Service = "other" // one payload per service
	release := agent.HoldAnswers()
	defer release()
	ctx, cancel := expiresOncePosted(agent)
	defer cancel()
	if err := s.Send(ctx, two); err == nil {
		t.Fatal("Send = nil with a payload left unsent")
	}
	if st := s.Stats(); st.Unconfirmed != 1 || st.Pending != 1 || st.Failed != 0 {
		t.Fatalf("stats %+v; want one unconfirmed, one pending, no failures", st)
	}
}

// TestAgentURLSecretStaysOut: a password in the Agent URL never shows in what the sink prints.
func TestAgentURLSecretStaysOut(t *testing.T) {
	s, err := NewAgentSink(AgentConfig{URL: "http://dd:s3cret@127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(s.URL(), "s3cret") {
		t.Errorf("URL() = %q", s.URL())
	}
	// unparsable (an unencoded '%' or '#' in the password) or with no "//" (scheme "dd")
	for _, u := range []string{"ftp://dd:s3cret@agent", "http://dd:s3cret%@agent:8126", "http://dd:s3cret#x@agent:8126", "dd:s3cret@agent:8126"} {
		if _, err := NewAgentSink(AgentConfig{URL: u}); err == nil || strings.Contains(err.Error(), "s3cret") {
			t.Errorf("refused URL %q: %v", u, err)
		}
	}
}

// expiresOncePosted returns a flush context whose time runs out (Err is DeadlineExceeded) once
// the Agent holds a post: a fixed short deadline could pass before the post is written on a
// loaded machine, and the payload would then rightly stay pending.
func expiresOncePosted(agent *agenttest.Agent) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second) // bounds a broken test
	go func() {
		for agent.Posts() == 0 && ctx.Err() == nil {
			time.Sleep(5 * time.Millisecond)
		}
		cancel()
	}()
	return expiredCtx{ctx}, cancel
}

// expiredCtx reports the end of its context as a deadline's.
type expiredCtx struct{ context.Context }

func (c expiredCtx) Err() error {
	if c.Context.Err() != nil {
		return context.DeadlineExceeded
	}
	return nil
}
