package aws

import (
	"encoding/json"
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
)

// TestIdentifiedAccessKeyClipped: the access key a client signs with is its own text, as long as
// an Authorization header (1 MiB) where the front trusts its clients; the 'aws client identified'
// line and the clients the front remembers for it (10,000) keep at most 255 bytes of it, in a
// copy: as a substring it kept the whole header alive for each client remembered, as the Kafka
// front's client.id would keep its request (clipIdentity).
func TestIdentifiedAccessKeyClipped(t *testing.T) {
	var logs syncbuf.Buffer
	tp := startProxy(t, func(c *Config) { c.TrustClients, c.Log = true, zerolog.New(&logs) })
	const clients, keyBytes = 40, 256 << 10
	send := func(i int) { sendUnderKey(t, tp.url, fmt.Sprintf("%d%s", i, strings.Repeat("K", keyBytes))) }
	send(-1) // the connection and the front's buffers, before the count
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range clients {
		send(i)
	}
	http.DefaultClient.CloseIdleConnections()
	runtime.GC()
	runtime.ReadMemStats(&after)
	grew := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("heap grew by %d bytes", grew)
	if grew > 4<<20 {
		t.Errorf("%d clients identified by access keys of %d bytes hold %d bytes of heap", clients, keyBytes, grew)
	}
	n, long := 0, 0
	for _, line := range strings.Split(logs.String(), "\n") {
		var m map[string]any // conn is a number
		if json.Unmarshal([]byte(line), &m) != nil || m["message"] != "aws client identified" {
			continue
		}
		n++
		if key, _ := m["access_key"].(string); len(key) > 255 {
			long++
		}
	}
	if n != clients+1 || long > 0 {
		t.Errorf("%d lines 'aws client identified', %d of them naming an access key over 255 bytes; want %d, none", n, long, clients+1)
	}
}

// TestIdentifiedAccessKeyKeptAfterAGeneration: a client remembered from before the last
// maxSeenClients/2 new ones is moved back among the recent ones when it comes again, and what
// moves must be the copy kept when it was first seen, not the access key of the request that
// brought it back: that is a substring of its Authorization header (up to 1 MiB where the front
// trusts its clients), which each such client would then keep alive.
func TestIdentifiedAccessKeyKeptAfterAGeneration(t *testing.T) {
	tp := startProxy(t, func(c *Config) { c.TrustClients = true })
	const clients, keyBytes = 40, 256 << 10
	send := func(key string) { sendUnderKey(t, tp.url, key) }
	bigKey := func(i int) string { return fmt.Sprintf("%d%s", i, strings.Repeat("K", keyBytes)) }
	for i := range clients {
		send(bigKey(i))
	}
	// As many new clients as a generation holds: the first ones are now in the previous one.
	for i := range maxSeenClients / 2 {
		send(fmt.Sprintf("AKIDSMALL%06d", i))
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range clients {
		send(bigKey(i)) // a header of its own, as each request has
	}
	http.DefaultClient.CloseIdleConnections()
	runtime.GC()
	runtime.ReadMemStats(&after)
	grew := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("heap grew by %d bytes", grew)
	if grew > 4<<20 {
		t.Errorf("%d clients that came back with access keys of %d bytes hold %d bytes of heap", clients, keyBytes, grew)
	}
}

// sendUnderKey sends a request the front answers itself (400), signed under the access key key.
func sendUnderKey(t *testing.T, url, key string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", "Kinesis_20131202.SubscribeToShard") // answered by the front itself
	req.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential="+key+"/20260101/us-east-1/kinesis/aws4_request, SignedHeaders=host;x-amz-date, Signature="+strings.Repeat("0", 64))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("SubscribeToShard answered %d, want 400", resp.StatusCode)
	}
}
