package kafka

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/kversion"
)

// TestLeaveAnsweredWithError: a consumer leaves its group and the coordinator answers with an
// error. A member the coordinator does not know (UNKNOWN_MEMBER_ID: its session expired, or the
// group is gone; FENCED_INSTANCE_ID: another process took its static identity) is out of the
// group all the same, and the proxy must forget it; one whose leave the coordinator could not
// take (NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE, an authorization failure) is still in the
// group, holding its partitions. LeaveGroup v0-2 names one member and puts its error in the
// top-level code; v3+ has one code per member, the top-level one for the whole group. A KIP-848
// member leaves with a heartbeat of member epoch -1, answered by one code.
func TestLeaveAnsweredWithError(t *testing.T) {
	c, guard := startCluster(t)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "leave-refused")
	produceKgo(t, ctx, kgoClient(t, p), topic, testRecords(6, time.UnixMilli(1700000700000)))
	v2 := kgo.MaxVersions(kversion.V2_3_0()) // LeaveGroup v2
	kip848 := kgo.ServerSideBalancer()
	// member: the fault answers the leaving member (v0-2 carry its code at the top level);
	// else the whole request.
	for _, tc := range []struct {
		name   string
		opt    kgo.Opt
		err    *kerr.Error
		member bool
		retry  bool // kgo retries the code: its leave ends with the test's context
		forget bool
	}{
		{"v2 unknown member", v2, kerr.UnknownMemberID, true, false, true},
		{"v2 group not found", v2, kerr.UnknownMemberID, false, false, true},
		{"v2 not coordinator", v2, kerr.NotCoordinator, false, true, false},
		{"v2 not authorized", v2, kerr.GroupAuthorizationFailed, false, false, false},
		{"v5 unknown member", nil, kerr.UnknownMemberID, true, false, true},
		{"v5 fenced instance", nil, kerr.FencedInstanceID, true, false, true},
		{"v5 member refused", nil, kerr.UnknownServerError, true, false, false},
		{"v5 group not found", nil, kerr.UnknownMemberID, false, false, true},
		{"v5 group id not found", nil, kerr.GroupIDNotFound, false, false, true},
		{"v5 coordinator not available", nil, kerr.CoordinatorNotAvailable, false, true, false},
		// KIP-848: the leave is a ConsumerGroupHeartbeat with member epoch -1.
		{"kip848 unknown member", kip848, kerr.UnknownMemberID, false, false, true},
		{"kip848 group id not found", kip848, kerr.GroupIDNotFound, false, false, true},
		{"kip848 not coordinator", kip848, kerr.NotCoordinator, false, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			group, id := uniqueTopic(t, "leave-refused-g"), uniqueTopic(t, "leave-refused-c")
			opts := []kgo.Opt{kgo.ConsumeTopics(topic), kgo.ConsumerGroup(group), kgo.ClientID(id),
				kgo.ConsumeResetOffset(kgo.NewOffset().AtStart())}
			if tc.opt != nil {
				opts = append(opts, tc.opt)
			}
			cl := kgoClient(t, p, opts...)
			part := firstPolledPartition(t, ctx, cl, group)
			if g := p.groupOf(id, topic, part); g != group {
				t.Fatalf("before the leave: group %q, want %q", g, group)
			}
			f := kfake.Fault{Keys: []kmsg.Key{kmsg.LeaveGroup}, Group: group, Err: tc.err, Count: -1, TopLevel: !tc.member}
			if strings.HasPrefix(tc.name, "kip848") {
				f.Keys = []kmsg.Key{kmsg.ConsumerGroupHeartbeat}
				f.When = func(req kmsg.Request) bool { return req.(*kmsg.ConsumerGroupHeartbeatRequest).MemberEpoch < 0 }
			}
			if tc.member {
				f.Resource, _ = cl.GroupMetadata()
			}
			h := c.Fault(f)
			lctx := ctx
			if tc.retry {
				var cancel context.CancelFunc
				lctx, cancel = context.WithTimeout(ctx, 3*time.Second)
				defer cancel()
			}
			err := cl.LeaveGroupContext(lctx)
			h.Remove()
			t.Logf("leave: %v", err)
			want := group
			if tc.forget {
				want = ""
			}
			if g := p.groupOf(id, topic, part); g != want {
				t.Errorf("after the leave answered %v: group %q, want %q", tc.err, g, want)
			}
		})
	}
	guard.check(t)
}

// TestLeaveNoMembersRefused: a LeaveGroup v3+ naming no member (an admin's "remove these
// members" with an empty list) takes nobody out of the group, whether the coordinator refuses it
// for the whole group (NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS) or answers it without an
// error and with no members, as Kafka's and kfake's coordinators do: the proxy must keep the
// group of the client that sent it.
func TestLeaveNoMembersRefused(t *testing.T) {
	c, guard := startCluster(t)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "leave-empty")
	produceKgo(t, ctx, kgoClient(t, p), topic, testRecords(6, time.UnixMilli(1700000800000)))
	for _, refusal := range []*kerr.Error{nil, kerr.NotCoordinator, kerr.CoordinatorLoadInProgress} {
		name := "accepted"
		if refusal != nil {
			name = refusal.Message
		}
		t.Run(name, func(t *testing.T) {
			group, id := uniqueTopic(t, "leave-empty-g"), uniqueTopic(t, "leave-empty-c")
			cl := kgoClient(t, p, kgo.ConsumeTopics(topic), kgo.ConsumerGroup(group), kgo.ClientID(id),
				kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
			part := firstPolledPartition(t, ctx, cl, group)
			if g := p.groupOf(id, topic, part); g != group {
				t.Fatalf("before the leave: group %q, want %q", g, group)
			}
			fc := kmsg.NewPtrFindCoordinatorRequest()
			fc.CoordinatorKey = group
			fr, err := fc.RequestWith(ctx, cl)
			if err != nil || fr.ErrorCode != 0 {
				t.Fatalf("FindCoordinator %s: %v (code %d)", group, err, fr.ErrorCode)
			}
			coord := fr.NodeID
			if len(fr.Coordinators) > 0 {
				coord = fr.Coordinators[0].NodeID
			}
			wantCode := int16(0)
			if refusal != nil {
				h := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.LeaveGroup}, Group: group, Err: refusal, TopLevel: true, Count: -1})
				defer h.Remove()
				wantCode = refusal.Code
			}
			leave := kmsg.NewPtrLeaveGroupRequest()
			leave.Version = 5
			leave.Group = group
			// Sent to the coordinator as it is: kgo's cl.Request would retry the refusal.
			resp, err := cl.Broker(int(coord)).Request(ctx, leave)
			if err != nil {
				t.Fatalf("LeaveGroup v5 with no members: %v", err)
			}
			if r := resp.(*kmsg.LeaveGroupResponse); r.ErrorCode != wantCode || len(r.Members) != 0 {
				t.Fatalf("LeaveGroup answered code %d and %d members, want %d and none (%v)", r.ErrorCode, len(r.Members), wantCode, refusal)
			}
			if g := p.groupOf(id, topic, part); g != group {
				t.Errorf("after a leave of no members answered %d: group %q, want %q (kept)", wantCode, g, group)
			}
		})
	}
	guard.check(t)
}

// firstPolledPartition polls cl, a member of group, until it gets records, and returns the
// partition of the first.
func firstPolledPartition(t *testing.T, ctx context.Context, cl *kgo.Client, group string) int32 {
	t.Helper()
	for {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("no records in group %s: %v", group, err)
		}
		if rs := fs.Records(); len(rs) > 0 {
			return rs[0].Partition
		}
	}
}
