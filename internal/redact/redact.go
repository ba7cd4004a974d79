// Package redact hides the secrets a string may carry before it reaches a log, an error or a page.
package redact

import "net/url"

// URL is s with the secret of its user info masked (an Agent URL may carry one): the password,
// or a user name alone, which is then a token. A string that does not parse as a URL is returned
// as it is: it holds no user info url.Parse could find either.
func URL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		return s
	}
	if _, ok := u.User.Password(); !ok {
		u.User = url.User("xxxxx")
		return u.String()
	}
	return u.Redacted()
}
