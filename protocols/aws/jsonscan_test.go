package aws

import (
	"math/rand/v2"
	"testing"
)

// skipStringBytewise is the plain definition skipString must agree with: walk to the first
// unescaped quote.
func skipStringBytewise(b []byte, i int) (int, bool) {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1, true
		}
	}
	return 0, false
}

// TestSkipString: skipString ends each string where a byte-by-byte walk does, escapes included.
func TestSkipString(t *testing.T) {
	inputs := []string{`""`, `"a"`, `"a\"b"x`, `"a\\"b"`, `"\\\\"`, `"\"`, `"abc`, `"a\`, `"\\\"x"y`, `""""`}
	r := rand.New(rand.NewPCG(3, 4))
	alphabet := []byte(`ab"\\`)
	for i := 0; i < 50000; i++ {
		b := make([]byte, 1+r.IntN(16))
		b[0] = '"'
		for j := 1; j < len(b); j++ {
			b[j] = alphabet[r.IntN(len(alphabet))]
		}
		inputs = append(inputs, string(b))
	}
	for _, in := range inputs {
		want, wantOK := skipStringBytewise([]byte(in), 0)
		got, err := skipString([]byte(in), 0)
		if (err == nil) != wantOK || got != want {
			t.Fatalf("%q: skipString = %d, %v; want %d, ok=%v", in, got, err, want, wantOK)
		}
	}
}
