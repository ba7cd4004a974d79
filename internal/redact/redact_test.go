package redact

import "testing"

func TestURL(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"http://localhost:8126", "http://localhost:8126"},
		{"http://dd:s3cret@agent:8126", "http://dd:xxxxx@agent:8126"},
		{"https://dd:s3cret@agent/path?q=1", "https://dd:xxxxx@agent/path?q=1"},
		{"http://token@agent:8126", "http://xxxxx@agent:8126"},
		{"unix:///var/run/datadog/apm.socket", "unix:///var/run/datadog/apm.socket"},
	} {
		if got := URL(tc.in); got != tc.want {
			t.Errorf("URL(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestURLUnparsable: a URL that url.Parse refuses (a password with '%', '#', '/' or a space in it)
// still has what comes before its '@' masked, with or without a scheme.
func TestURLUnparsable(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"http://dd:s3cr%et@agent:8126", "http://xxxxx@agent:8126"},
		{"http://dd:s3c#ret@agent:8126", "http://xxxxx@agent:8126"},
		{"http://dd:s3 cret@agent:8126/path", "http://xxxxx@agent:8126/path"},
		{"dd:s3cr%et@agent:8126", "xxxxx@agent:8126"},
		{"http://agent:8126/%zz", "http://agent:8126/%zz"},
	} {
		if got := URL(tc.in); got != tc.want {
			t.Errorf("URL(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
