package kafka

import (
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"
)

// TestInjectLz4Framing: a rewritten lz4 batch is framed as the Java producer frames it (64 KiB
// independent blocks, no content checksum), spans several blocks, and still decodes record for
// record; the codec's reused buffers carry nothing from one batch into the next.
func TestInjectLz4Framing(t *testing.T) {
	s := offlineSession(t)
	comp := compressor(t, kgo.Lz4Compression())
	for _, n := range []int{300, 3, 120} { // 300 KiB (five blocks), then smaller batches into the same buffers
		frame := produceFrame(9, "t", buildBatch(t, n, 1024, comp))
		out := rewrite(t, s, frame)
		checkInjected(t, "lz4", frame, out)

		h, err := parseRequestHeader(out)
		if err != nil {
			t.Fatal(err)
		}
		var v produceRequestView
		if err := parseProduce(h, out, &v); err != nil || len(v.parts) != 1 {
			t.Fatalf("rewritten frame: %d parts, %v", len(v.parts), err)
		}
		lz := out[v.parts[0].recStart+61:]
		if len(lz) < 7 || lz[0] != 0x04 || lz[1] != 0x22 || lz[2] != 0x4d || lz[3] != 0x18 {
			t.Fatalf("no lz4 frame magic: % x", lz[:min(len(lz), 8)])
		}
		flg, bd := lz[4], lz[5]
		if flg>>6 != 1 || flg&0x20 == 0 || flg&0x04 != 0 {
			t.Errorf("%d records: FLG %08b: want version 1, independent blocks, no content checksum", n, flg)
		}
		if (bd>>4)&7 != 4 {
			t.Errorf("%d records: BD %08b: want 64 KiB blocks", n, bd)
		}
	}
}
