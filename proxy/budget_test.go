package proxy

import "testing"

func TestBudget(t *testing.T) {
	b := &Budget{Max: 10}
	var x, y Share
	steps := []struct {
		name         string
		do           func() bool
		want         bool
		used, hx, hy int64
	}{
		{"x takes 6", func() bool { return b.Take(&x, 6) }, true, 6, 6, 0},
		{"y takes 5: over", func() bool { return b.Take(&y, 5) }, false, 6, 6, 0},
		{"y takes 4", func() bool { return b.Take(&y, 4) }, true, 10, 6, 4},
		{"x gives 2", func() bool { b.Give(&x, 2); return true }, true, 8, 4, 4},
		{"x gives 0", func() bool { b.Give(&x, 0); return true }, true, 8, 4, 4},
		{"y takes 2", func() bool { return b.Take(&y, 2) }, true, 10, 4, 6},
		{"x released", func() bool { b.Release(&x); return true }, true, 6, 0, 6},
		{"x takes 4 again", func() bool { return b.Take(&x, 4) }, true, 10, 4, 6},
	}
	for _, st := range steps {
		if got := st.do(); got != st.want || b.Used() != st.used || x.Held() != st.hx || y.Held() != st.hy {
			t.Fatalf("%s: %v, used %d, x %d, y %d; want %v, %d, %d, %d", st.name, got, b.Used(), x.Held(), y.Held(), st.want, st.used, st.hx, st.hy)
		}
	}
}
