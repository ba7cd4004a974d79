package aws

import (
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/dsmproxy/dsmproxy/pathway"
	"github.com/dsmproxy/dsmproxy/proxy"
)

// queueLimits are SQS queues' own message size limits (MaximumMessageSize, which a queue may set
// anywhere from 1 KiB up), as refusals have shown them. A SendMessage that fits its queue only
// without `_datadog` is refused once and sent again as the client sent it (resendUnmodified);
// later messages to that queue that would not fit with `_datadog` go without it. A batch entry
// refused so is the client's to resend, as the other entries stored. Queues are
// keyed by the Host the client used and their name; two queues of one name behind one Host only
// share the lower limit, which can cost injections, never a send.
type queueLimits struct {
	mu sync.Mutex
	m  *proxy.RecentMap[string, int]
}

// maxQueueLimits bounds the queues whose limits are remembered (the ones used most recently).
const maxQueueLimits = 10000

func newQueueLimits() *queueLimits {
	return &queueLimits{m: proxy.NewRecentMap[string, int](maxQueueLimits)}
}

func queueLimitKey(c *call, e pathway.Edge) string { return c.r.Host + "\x00" + e.Topic }

// limit is the size a message sent in c to queue e must stay within.
func (q *queueLimits) limit(c *call, e pathway.Edge, configured int) int {
	if c.service != ServiceSQS {
		return configured
	}
	q.mu.Lock()
	n, ok := q.m.Get(queueLimitKey(c, e))
	q.mu.Unlock()
	if ok && n < configured {
		return n
	}
	return configured
}

// sizeRefusal is the text SQS (and the emulators) give a message over its queue's limit.
const sizeRefusal = "Message must be shorter than "

// noteRefusal learns the limit of c's queue from a refusal saying it (code and msg of an error
// answer or a failed batch entry), and reports whether it was one.
func (q *queueLimits) noteRefusal(c *call, code, msg string) bool {
	// JSON answers name the exception (…#InvalidParameterValueException), Query answers and
	// batch entries the Query code.
	if c.service != ServiceSQS || code != "InvalidParameterValue" && code != "InvalidParameterValueException" {
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
	if old, ok := q.m.Get(queueLimitKey(c, c.edge)); !ok || n < old {
		q.m.Put(queueLimitKey(c, c.edge), n)
	}
	q.mu.Unlock()
	return true
}

// resendUnmodified reports whether a SendMessage the proxy rewrote (sent as body) was refused as
// over its queue's size limit, which it then knows; the client's own request is to go instead,
// as it would have without the proxy. The refusal stored nothing, so the resend cannot
// duplicate a message.
func (p *Proxy) resendUnmodified(c *call, body []byte, resp *http.Response, rb []byte) bool {
	if c.op != "SendMessage" || resp.StatusCode != http.StatusBadRequest || sameSlice(body, c.body) {
		return false
	}
	if code, msg := errorCode(resp, rb); !p.sizes.noteRefusal(c, code, msg) {
		return false
	}
	p.stats.injected.Add(^uint64(0)) // it goes without _datadog after all
	p.skip(c, c.edge, "queue_size_limit", "message with _datadog is over its queue's own size limit; sent again without it")
	return true
}
