package aws

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/xml"
	"net/http"
	"strconv"
	"strings"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
)

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func requestID() string {
	var b [16]byte
	rand.Read(b[:])
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// xmlNamespace is the Query protocol namespace of each service's error documents.
func xmlNamespace(service string) string {
	switch service {
	case ServiceSNS:
		return "http://sns.amazonaws.com/doc/2010-03-31/"
	default:
		return "http://queue.amazonaws.com/doc/2012-11-05/"
	}
}

// writeError answers in the request's own protocol with an AWS-shaped error the SDKs decode into
// their typed errors.
func (p *Proxy) writeError(w http.ResponseWriter, c *call, status int, code, msg string) {
	id := requestID()
	h := w.Header()
	h.Set("X-Amzn-Requestid", id)
	switch c.wire {
	case wireQuery:
		h.Set("Content-Type", "text/xml")
		var b strings.Builder
		b.WriteString(`<?xml version="1.0"?><ErrorResponse xmlns="` + xmlNamespace(c.service) + `"><Error><Type>Sender</Type><Code>`)
		xml.EscapeText(&b, []byte(code))
		b.WriteString("</Code><Message>")
		xml.EscapeText(&b, []byte(msg))
		b.WriteString("</Message></Error><RequestId>" + id + "</RequestId></ErrorResponse>")
		w.WriteHeader(status)
		w.Write([]byte(b.String()))
	case wireCBOR:
		// A CBOR client parses the body with its CBOR reader: a JSON body would leave it the code
		// (from X-Amzn-Errortype) without the message, which says what to do.
		h.Set("Content-Type", "application/x-amz-cbor-1.1")
		h.Set("X-Amzn-Errortype", code)
		b := appendCBORHead(nil, 5, 2) // a map of two text members, as Kinesis answers
		b = appendCBORText(appendCBORText(b, "__type"), code)
		b = appendCBORText(appendCBORText(b, "message"), msg)
		w.WriteHeader(status)
		w.Write(b)
	default:
		typ := code
		ct := "application/x-amz-json-1.1"
		if c.wire == wireJSON10 {
			ct = "application/x-amz-json-1.0"
			typ = "com.amazon.coral.service#" + code
			h.Set("X-Amzn-Query-Error", code+";Sender")
		}
		h.Set("Content-Type", ct)
		h.Set("X-Amzn-Errortype", code)
		b := []byte(`{"__type":`)
		b = appendJSONString(b, typ)
		b = append(b, `,"message":`...)
		b = appendJSONString(b, msg)
		b = append(b, '}')
		w.WriteHeader(status)
		w.Write(b)
	}
}

// errorCode pulls the AWS error code out of an error response (X-Amzn-Query-Error, JSON or CBOR
// __type, or XML <Code>); SQS codes are given as Query names, whichever wire form the answer came in.
func errorCode(service string, resp *http.Response, body []byte) (code, msg string) {
	// SQS over JSON (awsQueryCompatible) names the Query code of the error in this header beside
	// __type, and the SDKs show that code: it is the name the same failure has over Query.
	if q := resp.Header.Get("X-Amzn-Query-Error"); q != "" {
		code, _, _ = strings.Cut(q, ";")
	}
	b := skipWS(body, 0)
	if b < len(body) && body[b] == '{' {
		if ms, _, err := objectMembers(body, b); err == nil {
			t, ok := jsonString(body, find(ms, "__type"))
			switch {
			case code != "":
			case ok:
				code = t[strings.LastIndexByte(t, '#')+1:]
			default:
				// not AWS's JSON shape, but emulators (goaws) answer so and the SDKs read it
				code, _ = jsonString(body, find(ms, "Code"))
			}
			if m, ok := jsonString(body, find(ms, "message")); ok {
				msg = m
			} else if m, ok := jsonString(body, find(ms, "Message")); ok {
				msg = m
			}
		}
	} else if strings.Contains(resp.Header.Get("Content-Type"), "cbor") {
		// Kinesis's answers to the Java SDKs: a CBOR map with the same members as JSON's.
		if v, err := cborDecode(body); err == nil {
			m, _ := v.(map[string]any)
			if t, ok := m["__type"].(string); ok && code == "" {
				code = t[strings.LastIndexByte(t, '#')+1:]
			}
			if s, ok := m["message"].(string); ok {
				msg = s
			} else if s, ok := m["Message"].(string); ok {
				msg = s
			}
		}
	} else if root, err := parseXML(body); err == nil {
		if e := root.find("Error"); e != nil {
			if code == "" {
				code = e.childText("Code")
			}
			msg = e.childText("Message")
		}
	}
	if code == "" {
		code = resp.Header.Get("X-Amzn-Errortype")
		code, _, _ = strings.Cut(code, ":")
	}
	if service == ServiceSQS {
		if q, ok := sqsQueryCodes[code]; ok {
			code = q
		}
	}
	return code, msg
}

// sqsQueryCodes maps the names SQS's JSON errors have in __type to their Query codes, for a JSON
// answer without X-Amzn-Query-Error (an emulator that leaves it out), so that one failure is one
// error group whichever wire form the client speaks. The header comes first: it names errors no
// table lists. From the awsQueryError traits of aws-sdk-go-v2's service/sqs (v1.52,
// schemas/schemas.go; names the same in both are left out), and two common errors as
// local-aws-sqs pairs them.
var sqsQueryCodes = map[string]string{
	"BatchEntryIdsNotDistinct":     "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
	"BatchRequestTooLong":          "AWS.SimpleQueueService.BatchRequestTooLong",
	"EmptyBatchRequest":            "AWS.SimpleQueueService.EmptyBatchRequest",
	"InvalidBatchEntryId":          "AWS.SimpleQueueService.InvalidBatchEntryId",
	"KmsAccessDenied":              "KMS.AccessDeniedException",
	"KmsDisabled":                  "KMS.DisabledException",
	"KmsInvalidKeyUsage":           "KMS.InvalidKeyUsageException",
	"KmsInvalidState":              "KMS.InvalidStateException",
	"KmsNotFound":                  "KMS.NotFoundException",
	"KmsOptInRequired":             "KMS.OptInRequired",
	"KmsThrottled":                 "KMS.ThrottlingException",
	"MessageNotInflight":           "AWS.SimpleQueueService.MessageNotInflight",
	"PurgeQueueInProgress":         "AWS.SimpleQueueService.PurgeQueueInProgress",
	"QueueDeletedRecently":         "AWS.SimpleQueueService.QueueDeletedRecently",
	"QueueDoesNotExist":            "AWS.SimpleQueueService.NonExistentQueue",
	"QueueNameExists":              "QueueAlreadyExists",
	"TooManyEntriesInBatchRequest": "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
	"UnsupportedOperation":         "AWS.SimpleQueueService.UnsupportedOperation",
	// common errors, not in the SQS model
	"InvalidParameterValueException":    "InvalidParameterValue",
	"MissingRequiredParameterException": "MissingParameter",
}

func (p *Proxy) reportUpstreamError(c *call, resp *http.Response, body []byte) {
	code, msg := errorCode(c.service, resp, body)
	if code == "DryRunOperationException" && c.service == ServiceKinesis {
		// A Kinesis dry run that would have succeeded is answered so, having written and read
		// nothing: no error, and no record lost.
		return
	}
	p.stats.upstreamErr.Add(1)
	p.sizes.noteRefusal(c, code, msg)
	if code == "" {
		// No AWS shape (a load balancer's HTML page, an empty body): named by its status, so
		// that the event groups and reads as something.
		code = "HTTP " + strconv.Itoa(resp.StatusCode)
		if msg == "" {
			msg = http.StatusText(resp.StatusCode)
		}
	}
	retriable := resp.StatusCode >= 500 || strings.Contains(code, "Throttl") || code == "RequestThrottled" ||
		code == "ProvisionedThroughputExceededException" || code == "LimitExceededException"
	// The tracked error names the edge and the reason, not the client: on a shared front every
	// unnamed client is one service. Debug, as a throttled client may retry many times a second.
	if ev := p.log.Debug(); ev.Enabled() {
		ev = ev.Uint64("conn", connOf(c.r)).Str("client", c.r.RemoteAddr).Str("service", c.service).Str("op", c.op)
		if c.edge.Topic != "" {
			ev = ev.Str("topic", c.edge.Topic)
		}
		ev.Int("status", resp.StatusCode).Str("code", code).Str("error", msg).Msg("the service refused the request")
	}
	p.errs.Report(errtrack.Event{Time: c.now, Category: errtrack.BrokerError, Protocol: c.service, Operation: c.op,
		Code: int32(resp.StatusCode), Name: code, Message: msg, Retriable: retriable, Service: c.svcName,
		Edge: c.edge, Partition: -1, Messages: c.sent})
	if c.sent > 0 && !retriable {
		// A client that does not retry a refused send has lost those messages; one that does
		// resends them as a new request, which counts on its own.
		p.errs.Report(errtrack.Event{Time: c.now, Category: errtrack.LostMessage, Protocol: c.service, Operation: c.op,
			Code: int32(resp.StatusCode), Name: code, Message: "the service refused the send with a non-retriable error: " + msg,
			Service: c.svcName, Edge: c.edge, Partition: -1, Messages: c.sent})
	}
}

// reportFailedEntry reports one failed batch entry (SendMessageBatch, PublishBatch, PutRecords).
func (p *Proxy) reportFailedEntry(c *call, code, msg string, senderFault bool, n int) {
	p.sizes.noteRefusal(c, code, msg)
	p.errs.Report(errtrack.Event{Time: c.now, Category: errtrack.LostMessage, Protocol: c.service, Operation: c.op,
		Name: code, Message: msg, Retriable: !senderFault, Service: c.svcName, Edge: c.edge, Partition: -1, Messages: n})
}

// reportEntryError reports one failed entry of a DeleteMessageBatch or
// ChangeMessageVisibilityBatch on the queue's edge: a broker error, not a loss, since the message
// stays in the queue (one not deleted is delivered again).
func (p *Proxy) reportEntryError(c *call, code, msg string, senderFault bool) {
	p.errs.Report(errtrack.Event{Time: c.now, Category: errtrack.BrokerError, Protocol: c.service, Operation: c.op,
		Name: code, Message: msg, Retriable: !senderFault, Service: c.svcName, Edge: c.edge, Partition: -1, Messages: 1})
}
