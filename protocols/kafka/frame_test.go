package kafka

import (
	"bytes"
	"encoding/binary"
	"runtime"
	"testing"
)

// TestFrameBufferGrowsWithTheData: a request frame's size prefix alone does not allocate the
// size it claims; a frame that does arrive is read whole.
func TestFrameBufferGrowsWithTheData(t *testing.T) {
	claim := binary.BigEndian.AppendUint32(nil, 100<<20)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := readFrameInto(bytes.NewReader(append(claim, "only this"...)), DefaultMaxFrameBytes, nil)
	runtime.ReadMemStats(&after)
	if err == nil {
		t.Fatal("a frame cut short was read")
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 4<<20 {
		t.Errorf("a 100 MiB size prefix with 9 bytes behind it allocated %d bytes", grew)
	}
	body := bytes.Repeat([]byte("f"), 3<<20+5)
	in := append(binary.BigEndian.AppendUint32(nil, uint32(len(body))), body...)
	frame, err := readFrameInto(bytes.NewReader(in), DefaultMaxFrameBytes, nil)
	if err != nil || !bytes.Equal(frame, in) {
		t.Fatalf("a whole 3 MiB frame: %d bytes, %v", len(frame), err)
	}
}
