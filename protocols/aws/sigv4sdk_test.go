package aws

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

// TestVerifyAcceptsSDKSignatures signs requests of many shapes with aws-sdk-go-v2's signer, as a
// client would, and checks that the proxy's verifier rebuilds the same canonical request: each
// signature is accepted, and refused once the body, a signed header or the query changes.
func TestVerifyAcceptsSDKSignatures(t *testing.T) {
	when := time.Date(2026, 12, 1, 22, 5, 9, 0, time.UTC)
	body := `{"QueueUrl":"http://q/1","MessageBody":"hi"}`
	cases := []struct {
		name, method, url, host, token string
		headers                        http.Header
		length                         int64
	}{
		{name: "sqs json", method: "POST", url: "http://127.0.0.1:9324/", length: int64(len(body)),
			headers: http.Header{"Content-Type": {"application/x-amz-json-1.0"}, "X-Amz-Target": {"AmazonSQS.SendMessage"},
				"User-Agent": {"aws-sdk-go-v2/1.0"}, "Amz-Sdk-Invocation-Id": {"e1f5"}, "Amz-Sdk-Request": {"attempt=1; max=3"}}},
		{name: "session token", method: "POST", url: "https://sqs.eu-west-1.amazonaws.com/", token: "FQoGZXIvYXdzE//token+=", length: 3,
			headers: http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}},
		{name: "default http port dropped", method: "POST", url: "http://localhost:80/", length: 1, headers: http.Header{}},
		{name: "default https port dropped", method: "POST", url: "https://sns.us-east-1.amazonaws.com:443/", length: 1, headers: http.Header{}},
		{name: "other port kept", method: "POST", url: "https://localhost:8443/", length: 1, headers: http.Header{}},
		{name: "ipv6 default port", method: "POST", url: "http://[::1]:80/", length: 1, headers: http.Header{}},
		{name: "ipv6 other port", method: "POST", url: "http://[::1]:9324/", length: 1, headers: http.Header{}},
		{name: "explicit host", method: "POST", url: "http://127.0.0.1:9324/", host: "sqs.local:9324", length: 1, headers: http.Header{}},
		{name: "empty body", method: "GET", url: "http://127.0.0.1:9324/", headers: http.Header{"Accept": {"*/*"}}},
		{name: "query sorted by name then value", method: "GET",
			url:     "http://127.0.0.1:9324/000000000000/q?Action=ReceiveMessage&b=2&a=z&a=%20x&a=A&c=%7E*&Version=2012-11-05",
			headers: http.Header{}},
		{name: "path escaped twice", method: "POST", url: "http://127.0.0.1:9324/000000000000/my%20queue/a:b", length: 1, headers: http.Header{}},
		{name: "multi-value header, extra spaces", method: "POST", url: "http://127.0.0.1:9324/", length: 1,
			headers: http.Header{"X-Amz-User-Agent": {"  one   two ", "three"}, "X-Amzn-Trace-Id": {"Root=1-2-3"}, "Expect": {"100-continue"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			creds := awssdk.Credentials{AccessKeyID: testKey, SecretAccessKey: testSecret, SessionToken: tc.token}
			build := func() *http.Request {
				r, err := http.NewRequest(tc.method, tc.url, strings.NewReader(body))
				if err != nil {
					t.Fatal(err)
				}
				if tc.host != "" {
					r.Host = tc.host
				}
				r.ContentLength = tc.length
				r.Header = tc.headers.Clone()
				return r
			}
			r := build()
			hash := sha256Hex([]byte(body))
			if err := v4.NewSigner().SignHTTP(context.Background(), creds, r, hash, "sqs", "eu-west-1", when); err != nil {
				t.Fatal(err)
			}
			// The SDK rewrote the query into canonical order; other clients send theirs as built.
			r.URL.RawQuery = build().URL.RawQuery
			a, err := parseAuthorization(r.Header.Get("Authorization"))
			if err != nil {
				t.Fatal(err)
			}
			if f := verifyWithHash(r, &a, testSecret, hash, when, time.Minute); f != nil {
				t.Fatalf("SDK signature refused: %v", f)
			}
			for what, change := range map[string]func(r *http.Request) string{
				"body":   func(r *http.Request) string { return sha256Hex([]byte(body + " ")) },
				"date":   func(r *http.Request) string { r.Header.Set("X-Amz-Date", "20261201T220510Z"); return hash },
				"query":  func(r *http.Request) string { r.URL.RawQuery += "&z=1"; return hash },
				"method": func(r *http.Request) string { r.Method = "PUT"; return hash },
			} {
				r2 := r.Clone(context.Background())
				h := change(r2)
				if f := verifyWithHash(r2, &a, testSecret, h, when, time.Minute); f == nil || f.Code != "SignatureDoesNotMatch" {
					t.Errorf("changed %s: %v, want SignatureDoesNotMatch", what, f)
				}
			}
		})
	}
}
