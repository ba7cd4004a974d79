package kafka

import (
	"fmt"
	"maps"
	"runtime/debug"
	"slices"
	"time"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/dsmproxy/dsmproxy/pathway"
	"github.com/dsmproxy/dsmproxy/proxy"
)

// fetchFacts is what observing a fetch response needs from its request: where each partition was
// asked to start (records before it come back in whole compressed batches and are not counted) and
// the isolation level (read_committed consumers never see aborted records).
type fetchFacts struct {
	readCommitted bool
	offsets       map[fetchKey]int64 // the partitions the request names
	sessionEpoch  int32              // v7+: -1 no session, 0 a new one (full request), else incremental
	forgotten     []fetchKey         // v7+: partitions an incremental request removes from the session
	session       *sessionOffsets    // the fetch session's offsets, for partitions the request omits
}

// partitions is how many partitions the request names, fetched or forgotten: what its facts
// count against Proxy.facts and the observe queue.
func (f *fetchFacts) partitions() int { return len(f.offsets) + len(f.forgotten) }

// offset is the fetch offset of partition k: as the request names it, or as the fetch session
// holds it; -1 when unknown.
func (f *fetchFacts) offset(k fetchKey) int64 {
	if off, ok := f.offsets[k]; ok {
		return off
	}
	return f.session.offset(k)
}

// maxSessionDepth bounds the requests a sessionOffsets chain holds before it is flattened.
const maxSessionDepth = 8

// sessionOffsets is a fetch session's offsets as of one request: what that request named or
// forgot, over the offsets as of the request before. A snapshot never changes once made, so the
// observer reads it while later requests build theirs, and an incremental request costs what it
// names instead of a copy of the whole session (73 µs and 116 KB per request for a session of
// 1000 partitions); every maxSessionDepth requests the chain is flattened into one map.
type sessionOffsets struct {
	named     map[fetchKey]int64
	forgotten []fetchKey // win over named, as the broker removes them after adding
	parent    *sessionOffsets
	depth     int
	size      int // offsets held in the chain, a partition named twice counted twice
}

// offset is partition k's offset in the session, or -1 when the session does not hold it.
func (so *sessionOffsets) offset(k fetchKey) int64 {
	for ; so != nil; so = so.parent {
		if slices.Contains(so.forgotten, k) {
			return -1
		}
		if off, ok := so.named[k]; ok {
			return off
		}
	}
	return -1
}

// next is the session after a request that named offsets and forgot forgotten.
func (so *sessionOffsets) next(offsets map[fetchKey]int64, forgotten []fetchKey) *sessionOffsets {
	n := &sessionOffsets{named: offsets, forgotten: forgotten, parent: so, size: len(offsets)}
	if so != nil {
		n.depth = so.depth + 1
		n.size += so.size
	}
	if n.depth < maxSessionDepth && len(forgotten) <= 16 { // a long list is searched at every lookup
		return n
	}
	var chain []*sessionOffsets
	for c := n; c != nil; c = c.parent {
		chain = append(chain, c)
	}
	flat := make(map[fetchKey]int64, len(chain[len(chain)-1].named))
	for i := len(chain) - 1; i >= 0; i-- {
		maps.Copy(flat, chain[i].named)
		for _, k := range chain[i].forgotten {
			delete(flat, k)
		}
	}
	if len(flat) > maxSessionPartitions {
		// Only a client naming new partitions in request after request gets here: the session is
		// forgotten (its offsets unknown, as for a session begun before the proxy) and starts again
		// from the partitions later requests name.
		return nil
	}
	return &sessionOffsets{named: flat, size: len(flat)}
}

// maxSessionPartitions bounds the partitions a connection's fetch session keeps offsets for, far
// above what a consumer fetches from one broker.
const maxSessionPartitions = 1 << 17

// maxSessionEntries bounds the fetch session offsets all connections hold together, so their
// memory does not grow with the number of connections, which is unlimited unless max_conns is
// set. A session that would pass it is forgotten.
var maxSessionEntries int64 = 1 << 20

type fetchKey struct {
	topic     string
	id        [16]byte
	partition int32
}

// observeJob is a forwarded fetch response waiting to be observed off the client's path.
type observeJob struct {
	frame   []byte
	start   int
	version int16
	facts   *fetchFacts
	client  *clientInfo
	groups  *clientGroups       // the client's groups when the response came (nil: none yet)
	resp    *kmsg.FetchResponse // already decoded (v16+ node endpoints check), or nil
	// share: a ShareFetch response, decoded (and frame is its bytes, for the queue's bound);
	// shareGroup its request's group.
	share      *kmsg.ShareFetchResponse
	shareGroup string
	pooled     bool            // frame came from getFetchFrame: put it back once observed
	log        *zerolog.Logger // the connection's
	cost       int64           // what it counts against ObserveQueueBytes (enqueueObserve)
	// at is when the answer came (zero: when it is observed), the time of its checkpoints and
	// offsets: the queue may wait, and its high watermarks must not read as newer than a deletion
	// of their topic told meanwhile (Config.OffsetsGone), nor its records as consumed later
	// than the client had them.
	at time.Time
}

// factBytes is about what one partition of a request's facts takes in memory (a map entry of a
// fetchKey and an offset), for the observe queue's byte bound.
const factBytes = 100

// fetchRequest reads what the answer's observation needs, and returns the frame to forward: the
// client's, or it without its rack id (dropRack).
func (s *session) fetchRequest(h requestHeader, frame []byte, pd *pending) []byte {
	if !knownVersion(h.Key, h.Version) {
		return frame
	}
	f, rack, err := parseFetch(h, frame)
	if err != nil {
		s.requestParseError(h, err)
		return frame
	}
	if rack[1] > rack[0] && s.p.listenersMissing() {
		frame = dropRack(frame, rack, h.Flexible)
		if !s.rackDropped { // once a connection: a consumer fetches many times a second
			s.rackDropped = true
			s.log.Debug().Msg("fetch requests' rack id dropped while a broker node is left out: the leader serves them, instead of naming a follower the client cannot reach")
		}
	}
	if h.Version >= 7 {
		s.trackFetchSession(f)
	}
	if s.keepFacts(pd, f.partitions()) {
		pd.facts = f
		return frame
	}
	// No room for what the request names. A fetch session holds those offsets anyway (counted in
	// sessionEntries), so a session's fetch is still observed from its fetch offsets.
	kept := &fetchFacts{readCommitted: f.readCommitted, sessionEpoch: f.sessionEpoch}
	if f.sessionEpoch >= 0 {
		kept.session = s.fetchSession
	}
	pd.facts = kept
	return frame
}

// dropRack empties the rack id (Fetch v11+, KIP-392) at rack in frame, in place, and returns the
// shorter frame. A Kafka leader's rack-aware replica selector names a follower in the client's
// rack as the preferred read replica, and sends that partition no records; when the follower is
// a node left out, the proxy clears that id to -1 (clearLeftOutReplicas) and the client asks the
// leader again, which names the same follower again: the consumer would get nothing for as long
// as the node is left out. With no rack the selector picks the leader. The rack id is the last
// field before the request's tagged fields, and a fetch session (KIP-227) does not keep it.
func dropRack(frame []byte, rack [2]int, flexible bool) []byte {
	at := rack[0]
	if flexible {
		frame[at] = 1 // compact string: length + 1
		at++
	} else {
		frame[at], frame[at+1] = 0, 0
		at += 2
	}
	n := at + copy(frame[at:], frame[rack[1]:])
	frame = frame[:n]
	putSize(frame)
	return frame
}

// trackFetchSession keeps the offsets of the connection's fetch session (KIP-227) and gives f
// those of its time. A full request (epoch 0) starts a session with its partitions; an
// incremental one changes those it names and drops those it forgets; -1 ends it.
func (s *session) trackFetchSession(f *fetchFacts) {
	switch {
	case f.sessionEpoch < 0:
		s.fetchSession = nil
	case f.sessionEpoch == 0:
		s.fetchSession = (*sessionOffsets)(nil).next(f.offsets, nil)
	default:
		if len(f.offsets) > 0 || len(f.forgotten) > 0 {
			had := s.fetchSession != nil
			if s.fetchSession = s.fetchSession.next(f.offsets, f.forgotten); had && s.fetchSession == nil {
				s.p.stats.forgottenSessions.Add(1) // past maxSessionPartitions
			}
		}
	}
	s.accountSession()
	if f.sessionEpoch > 0 {
		f.session = s.fetchSession
	}
}

// accountSession brings the proxy's count of session offsets up to date with the connection's
// session, and forgets the session instead when all connections would hold over
// maxSessionEntries.
func (s *session) accountSession() {
	size := int64(0)
	if s.fetchSession != nil {
		size = int64(s.fetchSession.size)
	}
	d := size - s.sessionShare.Held()
	if d > 0 && !s.p.sessionEntries.Take(&s.sessionShare, d) {
		s.p.sessionEntries.Release(&s.sessionShare)
		s.fetchSession = nil
		s.p.stats.forgottenSessions.Add(1)
		return
	}
	s.p.sessionEntries.Give(&s.sessionShare, -d)
}

// fetchResponse forwards the response as it is, unless KIP-951 node endpoints (Fetch v16+, set
// only on leader changes) must be rewritten or a preferred read replica names a node left out,
// and queues it for observation after it is written.
func (s *session) fetchResponse(pd *pending, frame []byte) ([]byte, func()) {
	start, err := responseBodyStart(frame, pd.key, pd.flexible)
	if err != nil {
		s.p.decodeError("Fetch response", pd.key, pd.version, err)
		return frame, nil
	}
	facts, _ := pd.facts.(*fetchFacts)
	ci := s.info.Load()
	job := observeJob{frame: frame, start: start, version: pd.version, facts: facts, client: ci, groups: s.p.groups.current(ci.key()), log: &s.log,
		at: s.p.now()}
	out := frame
	if pd.version >= 11 { // no preferred read replica before
		s.clearReplicas(pd, frame[start:], s.p.leftOutNodes())
	}
	if pd.version >= 16 {
		resp := kmsg.NewPtrFetchResponse()
		if _, ok := s.decodeResponse(pd, frame, resp); !ok {
			return frame, nil
		}
		if len(resp.Brokers) > 0 && s.rewriteNodes(pd, resp) {
			out = encodeResponse(frame, start, resp)
		}
		job.resp = resp
	}
	return out, func() { s.p.enqueueObserve(job) }
}

// clearReplicas is clearLeftOutReplicas on a client's answer (nothing when leftOut is nil: no
// node is left out); a body it cannot walk goes on as it is, and the observer reports it.
func (s *session) clearReplicas(pd *pending, body []byte, leftOut func(int32) bool) {
	if leftOut == nil || pd.version < 11 {
		return
	}
	n, _ := clearLeftOutReplicas(body, pd.version, leftOut)
	s.replicasCleared(n)
}

// replicasCleared logs that n partitions of a client's fetch answer had their preferred read
// replica cleared (nothing for none).
func (s *session) replicasCleared(n int) {
	if n > 0 {
		s.log.Debug().Int("partitions", n).Msg("fetch answer's preferred read replica names a node left out: cleared, the client reads from the leader")
	}
}

// observeDroppedMessage is the log line of a fetch answer forwarded without consume checkpoints
// because the observation queue was full.
const observeDroppedMessage = "fetch answer forwarded without consume checkpoints: the queue of answers waiting to be observed is full"

// DefaultObserveQueueBytes is the default bound on the fetch responses waiting to be observed.
const DefaultObserveQueueBytes = 64 << 20

// enqueueObserve hands a fetch response to the observation worker, or drops it when the queue is
// full, in responses or in bytes: the client's data path never waits for monitoring. It reports
// whether the job was queued.
func (p *Proxy) enqueueObserve(job observeJob) bool {
	// The request's facts wait with the frame: a fetch may name more partitions than it has bytes.
	n := int64(len(job.frame))
	if job.facts != nil {
		n += factBytes * int64(job.facts.partitions())
	}
	if job.share != nil {
		n += shareCost(job.share) // decoded: a partition or a range takes more than on the wire
	}
	job.cost = n
	// One response bigger than the whole budget is still observed when nothing else waits.
	if q := p.queued.Add(n); q > int64(p.cfg.ObserveQueueBytes) && q != n {
		p.queued.Add(-n)
		p.observeDropped(job, q-n)
		return false
	}
	select {
	case p.observeQ <- job:
		return true
	default:
		p.queued.Add(-n)
		p.observeDropped(job, p.queued.Load())
		return false
	}
}

// observeDropped counts a fetch answer the queue had no room for, and logs it at Warn for the
// first 10 and every 1000th (Debug otherwise): its records reached the client, but their consume
// checkpoints are lost, which /dsm and the Agent would otherwise show only as a dip.
func (p *Proxy) observeDropped(job observeJob, queued int64) {
	n := p.stats.observeDropped.Add(1)
	if job.log == nil {
		return
	}
	ev := job.log.Debug()
	if proxy.LogNth(n) {
		ev = job.log.Warn()
	}
	ev.Int("bytes", len(job.frame)).Int64("queued_bytes", queued).Int("observe_queue_bytes", p.cfg.ObserveQueueBytes).
		Int("observe_queue", cap(p.observeQ)).Uint64("observe_dropped_total", n).Msg(observeDroppedMessage)
}

func (p *Proxy) observeLoop() {
	for job := range p.observeQ {
		if p.observeLate.Load() {
			p.stats.observeDropped.Add(1)
		} else {
			p.observeOne(job)
		}
		p.queued.Add(-job.cost)
		if job.pooled {
			// Nothing observation builds keeps a reference into the frame (contexts are decoded
			// into values, names copied), so it can take the next response.
			p.putFetchFrame(job.frame)
		}
	}
}

// observeOne observes one fetch response; a decoder bug on hostile bytes costs that response's
// observation, not the process (the bytes were already forwarded).
func (p *Proxy) observeOne(job observeJob) {
	defer func() {
		if r := recover(); r != nil {
			key := keyFetch
			if job.share != nil {
				key = keyShareFetch
			}
			if job.log != nil {
				job.log.Error().Interface("panic", r).Str("stack", string(debug.Stack())).Int16("version", job.version).
					Msgf("observing a %s response panicked; that response goes unobserved (it was already forwarded)", kmsg.NameForKey(key))
			}
			p.decodeError(kmsg.NameForKey(key)+" response", key, job.version, fmt.Errorf("observer panicked: %v", r))
		}
	}()
	if job.share != nil {
		p.observeShareFetch(job)
		return
	}
	p.observeFetch(job)
}

// observeFetch records high watermarks, partition errors and a consume checkpoint per record.
func (p *Proxy) observeFetch(job observeJob) {
	resp := job.resp
	if resp == nil {
		resp = kmsg.NewPtrFetchResponse()
		resp.SetVersion(job.version)
		if err := resp.ReadFrom(job.frame[job.start:]); err != nil {
			p.decodeError("Fetch response", keyFetch, job.version, err)
			return
		}
	}
	ci := job.client
	// What the answer says is as of when it came: its records reached the client then, and its
	// high watermarks were the log ends then.
	now := job.at
	if now.IsZero() {
		now = p.now()
	}
	if resp.ThrottleMillis > 0 {
		p.throttled(keyFetch, resp.ThrottleMillis, ci.service)
	}
	if resp.ErrorCode != 0 {
		p.brokerError(keyFetch, resp.ErrorCode, ci.service, pathway.Edge{Direction: pathway.In, Type: pathway.TypeKafka}, -1, 0)
	}
	key := ci.key()
	for ti := range resp.Topics {
		t := &resp.Topics[ti]
		name, ok := p.topicName(t.Topic, t.TopicID)
		if !ok {
			// Told only when records came: an empty answer (a long poll that timed out) lost nothing.
			if slices.ContainsFunc(t.Partitions, func(pt kmsg.FetchResponseTopicPartition) bool { return len(pt.RecordBatches) > 0 }) {
				p.skipOp("Fetch", "unknown_topic_id", "fetched records of a topic id unknown (in no Metadata answer seen yet, or forgotten past max_topic_ids): no consume checkpoints for them",
					ci.service, pathway.Edge{Direction: pathway.In, Type: pathway.TypeKafka}, -1, 0)
			}
			continue
		}
		for pi := range t.Partitions {
			part := &t.Partitions[pi]
			group := p.groups.lookupIn(job.groups, key, name, part.Partition)
			edge := pathway.Edge{Direction: pathway.In, Type: pathway.TypeKafka, Topic: name, Group: group, ClusterID: p.cluster()}
			if part.ErrorCode != 0 {
				p.brokerError(keyFetch, part.ErrorCode, ci.service, edge, part.Partition, 0)
				continue
			}
			if part.HighWatermark >= 0 {
				p.addOffset(pathway.Offset{Kind: pathway.KafkaHighWatermark, Service: ci.service, Topic: name, ClusterID: p.cluster(),
					Partition: part.Partition, Value: part.HighWatermark, Time: now.UnixNano()})
			}
			if len(part.RecordBatches) == 0 {
				continue
			}
			from := int64(-1)
			readCommitted := false
			if job.facts != nil {
				from = job.facts.offset(fetchKey{t.Topic, t.TopicID, part.Partition})
				readCommitted = job.facts.readCommitted
			}
			p.consumeRecords(ci, edge, part, from, readCommitted, now)
		}
	}
}

// listOffsetsResponse reports per-partition errors of ListOffsets, which consumers send to find
// where to start and which retry silently on leader moves and missing partitions.
func (s *session) listOffsetsResponse(pd *pending, frame []byte) {
	resp := kmsg.NewPtrListOffsetsResponse()
	if _, ok := s.decodeResponse(pd, frame, resp); !ok {
		return
	}
	ci := s.info.Load()
	key := ci.key()
	for _, t := range resp.Topics {
		for _, part := range t.Partitions {
			if part.ErrorCode == 0 {
				continue
			}
			edge := pathway.Edge{Direction: pathway.In, Type: pathway.TypeKafka, Topic: t.Topic,
				Group: s.p.groups.lookup(key, t.Topic, part.Partition), ClusterID: s.p.cluster()}
			s.p.brokerError(keyListOffsets, part.ErrorCode, ci.service, edge, part.Partition, 0)
		}
	}
}
