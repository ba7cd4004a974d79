package aws

import (
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dsmproxy/dsmproxy/pathway"
	"github.com/dsmproxy/dsmproxy/proxy"
)

// queueLimits are SQS queues' own message size limits (MaximumMessageSize, which a queue may set
// anywhere from 1 KiB up), as refusals have shown them. A send that fits its queue only without
// `_datadog` is refused once and sent again without it (refusedOverQueueLimit, and
// sendBatchAgain for a batch's entries); later messages to that queue that would not fit with
// `_datadog` go without it. That send again happens until the limit is learned, again after
// queueLimitTTL, and always where the proxy counts a message smaller than the queue does.
// Queues are keyed by the Host the client used and their name; two queues of one name behind one
// Host share the lower limit, which can cost injections, never a send.
type queueLimits struct {
	mu sync.Mutex
	m  *proxy.RecentMap[string, queueLimit]
}

type queueLimit struct {
	n  int       // bytes
	at time.Time // when a refusal said so
}

const (
	// maxQueueLimits bounds the queues whose limits are remembered (the ones used most recently).
	maxQueueLimits = 10000
	// queueLimitTTL: a limit learned this long ago is tried again, so that a queue whose limit was
	// raised, or which was made again, gets `_datadog` again. Trying costs one more request, once
	// per queue and TTL.
	queueLimitTTL = time.Hour
)

func newQueueLimits() *queueLimits {
	return &queueLimits{m: proxy.NewRecentMap[string, queueLimit](maxQueueLimits)}
}

func queueLimitKey(c *call, e pathway.Edge) string { return c.r.Host + "\x00" + e.Topic }

// learned is queue e's own limit as a refusal showed it, 0 when none did.
func (q *queueLimits) learned(c *call, e pathway.Edge) int {
	if c.service != ServiceSQS {
		return 0
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	l, ok := q.m.Get(queueLimitKey(c, e))
	if !ok || c.now.Sub(l.at) > queueLimitTTL {
		return 0
	}
	return l.n
}

// sizeRefusal is the text SQS (and the emulators) give a message over its queue's limit.
const sizeRefusal = "Message must be shorter than "

// noteRefusal learns the limit of c's queue from a refusal saying it (code and msg of an error
// answer or a failed batch entry), and reports whether it was one.
func (q *queueLimits) noteRefusal(c *call, code, msg string) bool {
	// errorCode gives JSON answers' code as Query names it, as batch entries do.
	if c.service != ServiceSQS || code != "InvalidParameterValue" {
		return false
	}
	_, rest, ok := strings.Cut(msg, sizeRefusal)
	if !ok {
		return false
	}
	digits, _, _ := strings.Cut(rest, " ")
	n, err := strconv.Atoi(digits)
	if err != nil || n <= 0 {
		return false
	}
	q.mu.Lock()
	// The lower of two limits still current stays: two queues of one name behind one Host (other
	// accounts) then share it instead of taking turns. A raised limit is taken once the old one
	// has expired.
	k := queueLimitKey(c, c.edge)
	if old, ok := q.m.Get(k); !ok || c.now.Sub(old.at) > queueLimitTTL || n <= old.n {
		q.m.Put(k, queueLimit{n: n, at: c.now})
	}
	q.mu.Unlock()
	return true
}

// refusedOverQueueLimit reports whether a SendMessage, or a whole SendMessageBatch (as FIFO
// batches are refused), the proxy gave `_datadog` was refused as over its queue's size limit,
// which it then knows: the request is to be rewritten and sent again without `_datadog`, as the
// client would have sent it without the proxy. The refusal stored nothing, so sending again
// cannot duplicate a message, nor reorder a FIFO group.
func (p *Proxy) refusedOverQueueLimit(c *call, resp *http.Response, rb []byte) bool {
	if c.op != "SendMessage" && c.op != "SendMessageBatch" || resp.StatusCode != http.StatusBadRequest || c.injected == 0 {
		return false
	}
	if code, msg := errorCode(c.service, resp, rb); !p.sizes.noteRefusal(c, code, msg) {
		return false
	}
	p.stats.injected.Add(^uint64(c.injected - 1)) // their `_datadog` never reached the queue
	p.stats.sentAgain.Add(1)
	return true
}
