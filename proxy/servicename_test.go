package proxy

import "testing"

func TestTrimGenerated(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"orders-api", "orders-api"},
		{" orders-api ", "orders-api"},
		{"orders-api-3", "orders-api"},
		{"orders-api-5f1c9a2e", "orders-api"},
		{"orders-api-2.4.1", "orders-api"},
		{"orders-api-v2.4", "orders-api"},
		{"orders-api-7d9f8b6c4-x2k9p", "orders-api"},
		{"orders-api-x2k9p", "orders-api"},
		{"orders-1b4e28ba-2fa1-11d2-883f-0016d3cca427-StreamThread-1", "orders"},
		{"1b4e28ba-2fa1-11d2-883f-0016d3cca427", ""},
		{"3", ""},
		{"v2.0.1", ""},
		{"5f1c9a2e", "5f1c9a2e"}, // a name that is only hex: nothing else would name the service
		{"team-blue", "team-blue"},
		{"orders-api-main", "orders-api-main"},
		{"", ""},
	} {
		if got := TrimGenerated(tc.in); got != tc.want {
			t.Errorf("TrimGenerated(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
