package aws

import (
	"cmp"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// This file verifies the SigV4 signature a client put on its request. The canonical request is
// rebuilt from exactly the headers the client listed in SignedHeaders, with Host as received, so
// it does not depend on which headers an SDK happens to sign.

const sigAlgorithm = "AWS4-HMAC-SHA256"

// authHeader is a parsed `Authorization: AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`.
type authHeader struct {
	AccessKey     string
	Date          string // yyyymmdd from the scope
	Region        string
	Service       string
	SignedHeaders []string
	Signature     string
}

var errAuth = errors.New("malformed SigV4 Authorization header")

// parseAuthorization parses a SigV4 Authorization header value.
func parseAuthorization(v string) (authHeader, error) {
	var a authHeader
	rest, ok := strings.CutPrefix(v, sigAlgorithm)
	if !ok || rest == "" || (rest[0] != ' ' && rest[0] != '\t') {
		return a, fmt.Errorf("%w: algorithm is not %s", errAuth, sigAlgorithm)
	}
	for _, part := range strings.Split(rest, ",") {
		k, val, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return a, fmt.Errorf("%w: %q has no '='", errAuth, part)
		}
		switch k {
		case "Credential":
			f := strings.Split(val, "/")
			if len(f) != 5 || f[4] != "aws4_request" || f[0] == "" || len(f[1]) != 8 {
				return a, fmt.Errorf("%w: credential %q is not AKID/date/region/service/aws4_request", errAuth, val)
			}
			a.AccessKey, a.Date, a.Region, a.Service = f[0], f[1], f[2], f[3]
		case "SignedHeaders":
			a.SignedHeaders = strings.Split(val, ";")
		case "Signature":
			a.Signature = val
		}
	}
	if a.AccessKey == "" || len(a.SignedHeaders) == 0 || len(a.Signature) != 64 {
		return a, fmt.Errorf("%w: Credential, SignedHeaders and a 64-digit Signature are required", errAuth)
	}
	if !sort.StringsAreSorted(a.SignedHeaders) {
		return a, fmt.Errorf("%w: SignedHeaders are not sorted", errAuth)
	}
	// Over HTTP/2 the JavaScript SDK signs the host as the :authority pseudo-header.
	if !contains(a.SignedHeaders, "host") && !contains(a.SignedHeaders, ":authority") {
		return a, fmt.Errorf("%w: host is not signed", errAuth)
	}
	return a, nil
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// authFailure is why a request was refused; Code is the AWS error code the client sees.
type authFailure struct {
	Code    string // InvalidClientTokenId, SignatureDoesNotMatch, MissingAuthenticationToken, ...
	Message string
}

func (f *authFailure) Error() string { return f.Code + ": " + f.Message }

// verifySigV4 checks r's signature with secret. body is the full request body.
func verifySigV4(r *http.Request, a *authHeader, secret string, body []byte, now time.Time, maxSkew time.Duration) *authFailure {
	return verifyWithHash(r, a, secret, sha256Hex(body), now, maxSkew)
}

// verifyWithHash is verifySigV4 with the hex SHA-256 of the body already computed.
func verifyWithHash(r *http.Request, a *authHeader, secret, bodyHash string, now time.Time, maxSkew time.Duration) *authFailure {
	amzDate := r.Header.Get("X-Amz-Date")
	if amzDate == "" {
		return &authFailure{"IncompleteSignature", "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."}
	}
	t, err := time.Parse("20060102T150405Z", amzDate)
	if err != nil {
		return &authFailure{"IncompleteSignature", "X-Amz-Date " + strconv.Quote(amzDate) + " is not yyyymmddThhmmssZ"}
	}
	if d := now.Sub(t); d > maxSkew || d < -maxSkew {
		return &authFailure{"SignatureDoesNotMatch", "Signature expired: " + amzDate + " is now earlier or later than the allowed clock skew (" + maxSkew.String() + ") of " + now.UTC().Format("20060102T150405Z")}
	}
	if amzDate[:8] != a.Date {
		return &authFailure{"SignatureDoesNotMatch", "Credential date " + a.Date + " does not match X-Amz-Date " + amzDate}
	}
	// S3-style clients sign the payload hash they put in X-Amz-Content-Sha256; it must then be the
	// body's real hash (UNSIGNED-PAYLOAD and streaming are not accepted for these services).
	if v := r.Header.Get("X-Amz-Content-Sha256"); v != "" && contains(a.SignedHeaders, "x-amz-content-sha256") {
		if !strings.EqualFold(v, bodyHash) {
			return &authFailure{"SignatureDoesNotMatch", "X-Amz-Content-Sha256 " + strconv.Quote(v) + " is not the SHA-256 of the body"}
		}
	}
	bp := signBufs.Get().(*[]byte)
	defer signBufs.Put(bp)
	b := appendCanonicalRequest((*bp)[:0], r, a.SignedHeaders, bodyHash)
	sum := sha256.Sum256(b)
	b = append(b[:0], sigAlgorithm+"\n"...)
	b = append(b, amzDate...)
	b = append(b, '\n')
	b = append(b, a.Date...)
	b = append(b, '/')
	b = append(b, a.Region...)
	b = append(b, '/')
	b = append(b, a.Service...)
	b = append(b, "/aws4_request\n"...)
	b = hex.AppendEncode(b, sum[:])
	*bp = b
	want := hmacSHA256(signingKey(secret, a.Date, a.Region, a.Service), b)
	var got [sha256.Size]byte
	n, err := hex.Decode(got[:], []byte(a.Signature))
	if err != nil || n != len(got) || !hmac.Equal(want, got[:]) {
		return &authFailure{"SignatureDoesNotMatch", "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method."}
	}
	return nil
}

// signBufs hold canonical requests while verification builds them.
var signBufs = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

func hmacSHA256(key, data []byte) []byte {
	h := hmac.New(sha256.New, key)
	h.Write(data)
	return h.Sum(nil)
}

// signingKeys caches derived keys: they change once a day per secret, region and service, and
// deriving one is four HMACs.
var signingKeys = struct {
	sync.Mutex
	m map[signingKeyID][]byte
}{m: map[signingKeyID][]byte{}}

type signingKeyID struct{ secret, date, region, service string }

func signingKey(secret, date, region, service string) []byte {
	ck := signingKeyID{secret, date, region, service}
	signingKeys.Lock()
	k, ok := signingKeys.m[ck]
	signingKeys.Unlock()
	if ok {
		return k
	}
	k = deriveKey(secret, date, region, service)
	if len(date)+len(region)+len(service) > maxCachedScope {
		return k // no AWS scope is that long: a client's own, not kept 1,024 times over
	}
	signingKeys.Lock()
	if len(signingKeys.m) >= 1024 {
		clear(signingKeys.m)
	}
	signingKeys.m[ck] = k
	signingKeys.Unlock()
	return k
}

// maxCachedScope bounds the scope text (date, region, service) of a cached signing key: the
// scope comes from the client, and a request may carry up to a megabyte of it.
const maxCachedScope = 128

func deriveKey(secret, date, region, service string) []byte {
	k := hmacSHA256([]byte("AWS4"+secret), []byte(date))
	k = hmacSHA256(k, []byte(region))
	k = hmacSHA256(k, []byte(service))
	return hmacSHA256(k, []byte("aws4_request"))
}

// appendCanonicalRequest appends the SigV4 canonical request for the listed headers to b.
func appendCanonicalRequest(b []byte, r *http.Request, signed []string, bodyHash string) []byte {
	b = append(b, r.Method...)
	b = append(b, '\n')
	path := r.URL.EscapedPath()
	if path == "" {
		path = "/"
	}
	// Non-S3 services sign the escaped path escaped once more.
	b = appendEscapedPath(b, path)
	b = append(b, '\n')
	b = append(b, canonicalQuery(r.URL.RawQuery)...)
	b = append(b, '\n')
	for _, h := range signed {
		b = append(b, h...)
		b = append(b, ':')
		switch h {
		case "host", ":authority": // the request's host, from either field in HTTP/2
			b = append(b, stripSpaces(r.Host)...)
		case "content-length":
			if v := r.Header.Get("Content-Length"); v != "" {
				b = append(b, strings.TrimSpace(v)...)
			} else {
				b = strconv.AppendInt(b, r.ContentLength, 10)
			}
		default:
			for i, v := range r.Header.Values(h) {
				if i > 0 {
					b = append(b, ',')
				}
				b = append(b, strings.TrimSpace(stripSpaces(v))...)
			}
		}
		b = append(b, '\n')
	}
	b = append(b, '\n')
	for i, h := range signed {
		if i > 0 {
			b = append(b, ';')
		}
		b = append(b, h...)
	}
	b = append(b, '\n')
	return append(b, bodyHash...)
}

// stripSpaces collapses runs of spaces into one, as the signers do before trimming.
func stripSpaces(s string) string {
	if !strings.Contains(s, "  ") {
		return s
	}
	var b strings.Builder
	prev := false
	for i := 0; i < len(s); i++ {
		if s[i] == ' ' {
			if prev {
				continue
			}
			prev = true
		} else {
			prev = false
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func unreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.' || c == '~'
}

// canonicalQuery encodes the query RFC 3986 style, sorted by encoded name, then encoded value.
func canonicalQuery(raw string) string {
	if raw == "" {
		return ""
	}
	v, err := url.ParseQuery(raw)
	if err != nil {
		return raw
	}
	type param struct{ k, v string }
	ps := make([]param, 0, len(v))
	for k, vs := range v {
		ek := queryEscape(k)
		for _, x := range vs {
			ps = append(ps, param{ek, queryEscape(x)})
		}
	}
	slices.SortFunc(ps, func(a, b param) int { return cmp.Or(strings.Compare(a.k, b.k), strings.Compare(a.v, b.v)) })
	var b strings.Builder
	for i, p := range ps {
		if i > 0 {
			b.WriteByte('&')
		}
		b.WriteString(p.k)
		b.WriteByte('=')
		b.WriteString(p.v)
	}
	return b.String()
}

// queryEscape percent-encodes every byte but the unreserved ones.
func queryEscape(s string) string { return strings.ReplaceAll(url.QueryEscape(s), "+", "%20") }

// appendEscapedPath appends p with every byte but the unreserved ones and '/' percent-encoded.
func appendEscapedPath(b []byte, p string) []byte {
	const hexUpper = "0123456789ABCDEF"
	for i := 0; i < len(p); i++ {
		c := p[i]
		if unreserved(c) || c == '/' {
			b = append(b, c)
			continue
		}
		b = append(b, '%', hexUpper[c>>4], hexUpper[c&15])
	}
	return b
}
