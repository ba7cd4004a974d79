package kafka

import (
	"maps"
	"net/netip"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/dsmproxy/dsmproxy/proxy"
)

// Fetch requests carry no group id, and group traffic goes to the coordinator on another
// connection. The proxy ties them together by client process: (source address, client.id,
// ApiVersions software name). Each process maps to the groups it joined, with the partitions each
// group assigned it; a fetched partition picks the group that owns it, or the only group.

type clientKey struct {
	addr     netip.Addr
	clientID string
	software string
}

type topicPartition struct {
	topic     string
	partition int32
}

const (
	maxGroupsPerClient = 64
	maxMembersPerGroup = 64 // per client key
)

type clientGroups struct {
	groups map[string]*groupMembers // nil: a member of the group, its assignment unknown
}

// groupMembers is what each member of one group behind one client key was assigned. Processes
// on one host with the same client.id share a key, and each holds its part of the group's
// partitions: the group holds a partition when any of them does.
type groupMembers struct {
	gen     int32 // latest classic generation seen; 0 for KIP-848 members
	members map[string]memberParts
	full    bool      // members were dropped at maxMembersPerGroup: theirs are not known
	fullAt  time.Time // when: after memberSilence, the members heard since are all there are
}

type memberParts struct {
	gen   int32
	parts map[topicPartition]struct{}
	// ids: partitions assigned under topic ids the proxy could not name then (KIP-848). A
	// KIP-848 assignment is sent again only when it changes, so lookups name them once a later
	// Metadata answer taught the proxy the id (resolveLocked).
	ids     map[[16]byte][]int32
	prev    map[topicPartition]struct{} // its assignment before: fetches sent then may still answer
	partial bool                        // its partitions are unknown (heard, not seen assigned)
	heard   time.Time                   // its latest heartbeat or assignment (KIP-848 members)
}

// memberSilence: a KIP-848 member not heard from for this long left without a leave (a process
// killed, or restarted under a new member id): its broker dropped it after its session timeout
// (45 s by default), and its partitions went to others. Classic members are dropped by
// generation instead.
const memberSilence = time.Minute

// live is gm without the KIP-848 members silent past memberSilence, and no longer full once
// every member has had that long to be heard again; gm itself when nothing changes.
func (gm *groupMembers) live(now time.Time) *groupMembers {
	stale := func(mp memberParts) bool { return mp.gen == 0 && now.Sub(mp.heard) > memberSilence }
	expired, silent := gm.full && now.Sub(gm.fullAt) > memberSilence, false
	for _, mp := range gm.members {
		silent = silent || stale(mp)
	}
	if !expired && !silent {
		return gm
	}
	next := &groupMembers{gen: gm.gen, members: maps.Clone(gm.members), full: gm.full && !expired, fullAt: gm.fullAt}
	maps.DeleteFunc(next.members, func(_ string, mp memberParts) bool { return stale(mp) })
	return next
}

// known: every member's partitions are known, so a partition none holds (nor held before) is not
// the group's.
func (gm *groupMembers) known() bool {
	if gm == nil || len(gm.members) == 0 || gm.full {
		return false
	}
	for _, m := range gm.members {
		if m.partial || len(m.ids) > 0 {
			return false
		}
	}
	return true
}

func (gm *groupMembers) holds(tp topicPartition) bool {
	if gm == nil {
		return false
	}
	for _, m := range gm.members {
		if _, ok := m.parts[tp]; ok {
			return true
		}
	}
	return false
}

// held: a member holds tp or held it before its latest assignment (a fetch sent before a
// rebalance took the partition away answers after it).
func (gm *groupMembers) held(tp topicPartition) bool {
	if gm.holds(tp) {
		return true
	}
	for _, m := range gm.members {
		if _, ok := m.prev[tp]; ok {
			return true
		}
	}
	return false
}

// groupTracker is bounded to the clients seen most recently: a client that fetches, commits or
// heartbeats keeps its assignments however many others come and go (classic consumers learn them
// only at a rebalance, so forgetting a busy client would cost its group tag until the next one).
type groupTracker struct {
	mu      sync.Mutex
	clients *proxy.RecentMap[clientKey, *clientGroups]
	now     func() time.Time
	names   func(id [16]byte) (string, bool) // the proxy's topic ids (nil: none)
}

func newGroupTracker(limit int) *groupTracker {
	return &groupTracker{clients: proxy.NewRecentMap[clientKey, *clientGroups](limit), now: time.Now}
}

func (g *groupTracker) entry(k clientKey) *clientGroups {
	cg, _ := g.clients.Get(k)
	if cg == nil {
		cg = &clientGroups{groups: make(map[string]*groupMembers)}
		g.clients.Put(k, cg)
	}
	return cg
}

// maxGroupNameBytes: longer group ids are not learned (their consumers' checkpoints carry no
// group tag), so that the names a client sends cannot grow the tracker without bound.
const maxGroupNameBytes = 255

// learn records that client k is a member of group.
func (g *groupTracker) learn(k clientKey, group string) {
	if group == "" || len(group) > maxGroupNameBytes {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	cg := g.entry(k)
	if _, ok := cg.groups[group]; !ok {
		if len(cg.groups) >= maxGroupsPerClient {
			clear(cg.groups)
		}
		cg.groups[group] = nil
	}
}

// forget drops the members that left group from client k's groups, and the group with the last
// of them (or with no members named). (Another process behind the same key that stays in the
// group without an assignment seen is learned again at its next heartbeat.)
// The groups are replaced, not changed in place: fetches observed after the leave but answered
// before it were the member's, and look their group up in the groups of their time (current).
func (g *groupTracker) forget(k clientKey, group string, members []string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	cg, _ := g.clients.Get(k)
	if cg == nil {
		return
	}
	gm, ok := cg.groups[group]
	if !ok {
		return
	}
	next := &clientGroups{groups: maps.Clone(cg.groups)}
	left := 0
	if gm != nil {
		rest := &groupMembers{gen: gm.gen, members: maps.Clone(gm.members), full: gm.full}
		for _, m := range members {
			delete(rest.members, m)
		}
		next.groups[group], left = rest, len(rest.members)
	}
	if left == 0 || len(members) == 0 {
		delete(next.groups, group)
	}
	g.clients.Put(k, next)
}

// current is client k's groups now (nil: none learned), for a lookup later (lookupIn).
func (g *groupTracker) current(k clientKey) *clientGroups {
	g.mu.Lock()
	defer g.mu.Unlock()
	cg, _ := g.clients.Get(k)
	return cg
}

// groupMember is what a SyncGroup or ConsumerGroupHeartbeat request says: the group, the member
// and its classic generation (0 for ConsumerGroupHeartbeat).
type groupMember struct {
	group, member string
	gen           int32
}

// groupLeave is what a request by which members leave their group says (LeaveGroup, or a
// ConsumerGroupHeartbeat with a negative member epoch): the group and the members.
type groupLeave struct {
	group   string
	members []string
}

// factsGroup is the group a group request named.
func factsGroup(pd *pending) string {
	switch g := pd.facts.(type) {
	case string:
		return g
	case groupMember:
		return g.group
	case groupLeave:
		return g.group
	}
	return ""
}

// assign replaces the partitions group assigned to client k (one member, for tests).
func (g *groupTracker) assign(k clientKey, group string, parts []topicPartition) {
	g.assignMember(k, groupMember{group: group}, parts, nil)
}

// heard records a member of group behind client k that heartbeats: one whose assignment was
// not seen (given before the proxy started, or unchanged since) holds partitions not known.
func (g *groupTracker) heard(k clientKey, m groupMember) {
	if m.group == "" || len(m.group) > maxGroupNameBytes {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	cg, _ := g.clients.Get(k)
	if cg == nil {
		return
	}
	gm, ok := cg.groups[m.group]
	if !ok {
		return // learned first, from the same answer
	}
	if gm == nil {
		// Remembered even so: when another member's assignment comes first, this one's
		// partitions stay the group's.
		gm = &groupMembers{gen: m.gen}
	}
	if m.gen < gm.gen-1 {
		return // a stale generation
	}
	now := g.now()
	gm = gm.live(now)
	cg.groups[m.group] = gm
	if mp, ok := gm.members[m.member]; ok {
		mp.heard = now // in place: lookups of earlier groups read no times
		gm.members[m.member] = mp
		return
	}
	if gm.full && len(gm.members) >= maxMembersPerGroup {
		return
	}
	// Recorded while the group is full too: once its memberSilence is over, the members heard
	// since are taken for all there are, and one that only heartbeats is one of them.
	next := &groupMembers{gen: gm.gen, members: maps.Clone(gm.members), full: gm.full, fullAt: gm.fullAt}
	if next.members == nil {
		next.members = make(map[string]memberParts)
	}
	if len(next.members) >= maxMembersPerGroup {
		next.full, next.fullAt = true, now
	} else {
		next.members[m.member] = memberParts{gen: m.gen, partial: true, heard: now}
	}
	cg.groups[m.group] = next
}

// assignMember replaces the partitions group assigned to one member behind client k, ids those
// of topics not named yet. A classic member of an older generation than the previous one has
// not joined since, and is dropped: it left without a LeaveGroup (or has a new member id), and
// its partitions went to others.
func (g *groupTracker) assignMember(k clientKey, m groupMember, parts []topicPartition, ids map[[16]byte][]int32) {
	if m.group == "" || len(m.group) > maxGroupNameBytes {
		return
	}
	set := make(map[topicPartition]struct{}, len(parts))
	for _, tp := range parts {
		set[tp] = struct{}{}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	cg := g.entry(k)
	old, ok := cg.groups[m.group]
	if !ok && len(cg.groups) >= maxGroupsPerClient {
		clear(cg.groups)
	}
	now := g.now()
	gm := &groupMembers{gen: m.gen, members: make(map[string]memberParts)}
	// A generation older than the one before: the group was deleted and created again (its
	// generations start over), and its old members are gone.
	if old != nil && m.gen >= old.gen-1 {
		old = old.live(now)
		gm.gen, gm.full, gm.fullAt = max(old.gen, m.gen), old.full, old.fullAt
		for id, mp := range old.members {
			if mp.gen >= gm.gen-1 {
				gm.members[id] = mp
			}
		}
	}
	if _, ok := gm.members[m.member]; !ok && len(gm.members) >= maxMembersPerGroup {
		clear(gm.members)
		gm.full, gm.fullAt = true, now
	}
	was := gm.members[m.member]
	g.resolveLocked(&was) // the partitions it held under ids named since
	gm.members[m.member] = memberParts{gen: m.gen, parts: set, ids: ids, prev: was.parts, heard: now}
	cg.groups[m.group] = gm
}

// lookup returns the group client k consumes topic/partition for, or "". Consumers of several
// groups can share a key (one host, the same client.id: librdkafka's default "rdkafka", kgo's
// "kgo") and hold the same partition; which of them fetched is then unknown, and the answer is
// "" rather than one group or the other at random.
func (g *groupTracker) lookup(k clientKey, topic string, partition int32) string {
	g.mu.Lock()
	defer g.mu.Unlock()
	cg, _ := g.clients.Get(k)
	return g.lookupLocked(cg, topic, partition)
}

// lookupIn is lookup in groups current returned earlier; with nil, in client k's groups now.
func (g *groupTracker) lookupIn(cg *clientGroups, k clientKey, topic string, partition int32) string {
	if cg == nil {
		return g.lookup(k, topic, partition)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.lookupLocked(cg, topic, partition)
}

func (g *groupTracker) lookupLocked(cg *clientGroups, topic string, partition int32) string {
	if cg == nil {
		return ""
	}
	tp := topicPartition{topic, partition}
	found, holders, only := "", 0, ""
	for name, gm := range cg.groups {
		if gm != nil {
			for id, mp := range gm.members {
				if len(mp.ids) > 0 && g.resolveLocked(&mp) {
					gm.members[id] = mp
				}
			}
		}
		if gm.holds(tp) {
			found = name
			holders++
		}
		// A group whose partitions are all known does not read one none of its members holds
		// (the client reads it with no group, or in a group the proxy did not see it join).
		if len(cg.groups) == 1 && (!gm.known() || gm.held(tp)) {
			only = name
		}
	}
	switch {
	case holders == 1:
		return found
	case holders > 1:
		return ""
	}
	return only
}

// resolveLocked moves the partitions of mp's topic ids the proxy can name now into its parts,
// and reports whether any moved. In place: an id names one topic, in the groups of any time.
func (g *groupTracker) resolveLocked(mp *memberParts) bool {
	if len(mp.ids) == 0 || g.names == nil {
		return false
	}
	moved := false
	for id, ps := range mp.ids {
		name, ok := g.names(id)
		if !ok {
			continue
		}
		if mp.parts == nil {
			mp.parts = make(map[topicPartition]struct{}, len(ps))
		}
		for _, p := range ps {
			mp.parts[topicPartition{name, p}] = struct{}{}
		}
		delete(mp.ids, id)
		moved = true
	}
	if len(mp.ids) == 0 {
		mp.ids = nil
	}
	return moved
}

// syncGroupResponse learns the member's assignment from a classic "consumer" protocol SyncGroup.
func (s *session) syncGroupResponse(pd *pending, frame []byte) {
	group := factsGroup(pd)
	resp := kmsg.NewPtrSyncGroupResponse()
	if _, ok := s.decodeResponse(pd, frame, resp); !ok {
		return
	}
	s.groupError(pd, resp.ErrorCode)
	if resp.ErrorCode != 0 || group == "" {
		return
	}
	s.p.groups.learn(s.info.Load().key(), group)
	m, _ := pd.facts.(groupMember)
	var a kmsg.ConsumerMemberAssignment
	if len(resp.MemberAssignment) > 0 && a.ReadFrom(resp.MemberAssignment) != nil {
		return // not the consumer protocol: the group is still learned
	}
	var parts []topicPartition
	for _, t := range a.Topics {
		for _, p := range t.Partitions {
			parts = append(parts, topicPartition{t.Topic, p})
		}
	}
	s.p.groups.assignMember(s.info.Load().key(), m, parts, nil)
}

// heartbeatResponse learns a KIP-848 member's assignment (topic ids) from ConsumerGroupHeartbeat.
func (s *session) heartbeatResponse(pd *pending, frame []byte) {
	group := factsGroup(pd)
	resp := kmsg.NewPtrConsumerGroupHeartbeatResponse()
	if _, ok := s.decodeResponse(pd, frame, resp); !ok {
		return
	}
	s.groupError(pd, resp.ErrorCode)
	if leave, leaving := pd.facts.(groupLeave); leaving {
		// kgo's leave848 too takes UNKNOWN_MEMBER_ID and GROUP_ID_NOT_FOUND for a leave done.
		if group != "" && outOfGroup(resp.ErrorCode) {
			s.p.groups.forget(s.info.Load().key(), group, leave.members)
		}
		return
	}
	if resp.ErrorCode != 0 || group == "" {
		return
	}
	s.p.groups.learn(s.info.Load().key(), group)
	m, _ := pd.facts.(groupMember)
	if resp.MemberID != nil && *resp.MemberID != "" { // v0: the coordinator names a new member
		m.member = *resp.MemberID
	}
	if resp.Assignment == nil { // unchanged
		s.p.groups.heard(s.info.Load().key(), m)
		return
	}
	var parts []topicPartition
	var ids map[[16]byte][]int32
	for _, t := range resp.Assignment.Topics {
		name, ok := s.p.topicName("", t.TopicID)
		if !ok {
			if ids == nil {
				ids = make(map[[16]byte][]int32)
			}
			ids[t.TopicID] = append(ids[t.TopicID], t.Partitions...)
			continue
		}
		for _, p := range t.Partitions {
			parts = append(parts, topicPartition{name, p})
		}
	}
	s.p.groups.assignMember(s.info.Load().key(), m, parts, ids)
}

// groupResponse reports the error codes of JoinGroup, Heartbeat and LeaveGroup responses: the
// rebalance and fencing errors clients retry without telling anyone.
func (s *session) groupResponse(pd *pending, frame []byte) {
	switch pd.key {
	case keyJoinGroup:
		resp := kmsg.NewPtrJoinGroupResponse()
		if _, ok := s.decodeResponse(pd, frame, resp); ok {
			s.groupError(pd, resp.ErrorCode)
			s.learnGroup(pd, resp.ErrorCode)
		}
	case keyHeartbeat:
		resp := kmsg.NewPtrHeartbeatResponse()
		if _, ok := s.decodeResponse(pd, frame, resp); ok {
			s.groupError(pd, resp.ErrorCode)
			s.learnGroup(pd, resp.ErrorCode)
		}
	case keyLeaveGroup:
		resp := kmsg.NewPtrLeaveGroupResponse()
		if _, ok := s.decodeResponse(pd, frame, resp); !ok {
			return
		}
		s.groupError(pd, resp.ErrorCode)
		for _, m := range resp.Members { // v3+: one code per member leaving
			s.groupError(pd, m.ErrorCode)
		}
		// A leave refused for the whole group (NOT_COORDINATOR, say) took nobody out, and so
		// did one naming no member (v3+), even answered without an error.
		if leave, ok := pd.facts.(groupLeave); ok && outOfGroup(resp.ErrorCode) {
			if gone := leftMembers(leave, pd.version, resp); len(gone) > 0 {
				s.p.groups.forget(s.info.Load().key(), leave.group, gone)
			}
		}
	}
}

// leftMembers is the members of leave out of the group by the coordinator's answer. v0-2 name
// one member and carry its code at the top level; v3+ carry one code per member, and a top-level
// one for the group.
func leftMembers(leave groupLeave, version int16, resp *kmsg.LeaveGroupResponse) []string {
	if !outOfGroup(resp.ErrorCode) {
		return nil
	}
	if version < 3 || resp.ErrorCode != 0 {
		return leave.members
	}
	var gone []string
	for i, m := range resp.Members {
		if !outOfGroup(m.ErrorCode) {
			continue
		}
		id := m.MemberID // the broker's echo, resolved for a static member named by instance id
		if id == "" && i < len(leave.members) {
			id = leave.members[i]
		}
		gone = append(gone, id)
	}
	return gone
}

// outOfGroup: a leave answered with code left the member out of the group. It left, or the
// coordinator does not know it: UNKNOWN_MEMBER_ID (its session expired, or the group is gone),
// GROUP_ID_NOT_FOUND, FENCED_INSTANCE_ID (another member holds its static identity). Any other
// code (NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE, an authorization failure) refused the leave:
// the member is still in the group with its partitions, and the client retries elsewhere.
func outOfGroup(code int16) bool {
	switch code {
	case 0, kerr.UnknownMemberID.Code, kerr.GroupIDNotFound.Code, kerr.FencedInstanceID.Code:
		return true
	}
	return false
}

// learnGroup records that the client is a member of the request's group, when the coordinator
// answered without an error.
func (s *session) learnGroup(pd *pending, code int16) {
	if code != 0 {
		return
	}
	switch f := pd.facts.(type) {
	case string:
		s.p.groups.learn(s.info.Load().key(), f)
	case groupMember: // Heartbeat
		s.p.groups.learn(s.info.Load().key(), f.group)
		s.p.groups.heard(s.info.Load().key(), f)
	}
}

// groupError reports a group coordination error; the edge names the group, not a topic, and the
// cluster, as commit and fetch error edges do (a group id is unique only within its cluster).
func (s *session) groupError(pd *pending, code int16) {
	// MEMBER_ID_REQUIRED is a step of the JoinGroup handshake (KIP-394): every new member gets it
	// once and rejoins with the id it carries. Not an error anyone needs to see.
	if code == 0 || (pd.key == keyJoinGroup && code == kerr.MemberIDRequired.Code) {
		return
	}
	s.groupCodeError(pd.key, factsGroup(pd), code)
}
