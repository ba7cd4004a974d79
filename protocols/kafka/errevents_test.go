package kafka

import (
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/pathway"
)

// TestGroupErrorEvents sends group requests a real coordinator refuses (a member it never saw, a
// generation it never had) and checks each refusal becomes a broker error event on the group's edge
// carrying the code the client received.
func TestGroupErrorEvents(t *testing.T) {
	c, _ := startCluster(t)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	cl := kgoClient(t, p, kgo.ClientID("grouper"))
	const group = "g-errors"

	join := kmsg.NewPtrJoinGroupRequest()
	join.Group, join.MemberID, join.ProtocolType = group, "ghost-member", "consumer"
	join.SessionTimeoutMillis, join.RebalanceTimeoutMillis = 10000, 10000
	jp := kmsg.NewJoinGroupRequestProtocol()
	jp.Name, jp.Metadata = "range", []byte{0, 0}
	join.Protocols = append(join.Protocols, jp)
	jr, err := join.RequestWith(ctx, cl)
	if err != nil {
		t.Fatalf("join: %v", err)
	}

	hb := kmsg.NewPtrHeartbeatRequest()
	hb.Group, hb.Generation, hb.MemberID = group, 42, "ghost-member"
	hr, err := hb.RequestWith(ctx, cl)
	if err != nil {
		t.Fatalf("heartbeat: %v", err)
	}

	leave := kmsg.NewPtrLeaveGroupRequest()
	leave.Group, leave.MemberID = group, "ghost-member"
	lm := kmsg.NewLeaveGroupRequestMember()
	lm.MemberID = "ghost-member"
	leave.Members = append(leave.Members, lm)
	lr, err := leave.RequestWith(ctx, cl)
	if err != nil {
		t.Fatalf("leave: %v", err)
	}
	leaveCode := lr.ErrorCode
	if leaveCode == 0 && len(lr.Members) > 0 {
		leaveCode = lr.Members[0].ErrorCode
	}

	want := map[string]int16{"JoinGroup": jr.ErrorCode, "Heartbeat": hr.ErrorCode, "LeaveGroup": leaveCode}
	for op, code := range want {
		if code == 0 {
			t.Fatalf("%s was accepted; the test needs the coordinator to refuse it", op)
		}
	}
	edge := pathway.Edge{Direction: pathway.In, Type: pathway.TypeKafka, Group: group}
	waitFor(t, "group error events", func() bool {
		seen := map[string]bool{}
		for _, e := range p.errs.byCategory(errtrack.BrokerError) {
			if code, ok := want[e.Operation]; ok && int16(e.Code) == code && e.Edge == edge && e.Service == "grouper" && e.Name != "" {
				seen[e.Operation] = true
			}
		}
		return len(seen) == len(want)
	})
}
