// Package redact hides the secrets a string may carry before it reaches a log, an error or a page.
package redact

import (
	"errors"
	"net/url"
	"strings"
)

// URL is s with the secret of its user info masked (an Agent URL may carry one): the password,
// or a user name alone, which is then a token. A string url.Parse refuses (a password with a '%',
// '#', '/' or space not percent-encoded), or reads with no host ("dd:s3cret@agent:8126", scheme
// "dd"), has all before its last '@' masked, after the scheme's "://".
func URL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.Opaque != "" {
		at := strings.LastIndexByte(s, '@')
		if at < 0 {
			return s // no user info anywhere
		}
		start := 0
		if i := strings.Index(s, "://"); i >= 0 && i < at {
			start = i + len("://")
		}
		return s[:start] + "xxxxx" + s[at:]
	}
	if u.User == nil {
		return s
	}
	if _, ok := u.User.Password(); !ok {
		u.User = url.User("xxxxx")
		return u.String()
	}
	return u.Redacted()
}

// ErrUnparsable stands for url.Parse's error on a URL that may carry user info: that error
// quotes the URL, or the part it stopped at, password included.
var ErrUnparsable = errors.New("does not parse as a URL (a password with '%', '#', '/', '?' or a space must be percent-encoded)")

// ParseError is err, url.Parse's error on s, fit to show: ErrUnparsable when s may carry user
// info.
func ParseError(s string, err error) error {
	if err != nil && strings.Contains(s, "@") {
		return ErrUnparsable
	}
	return err
}
