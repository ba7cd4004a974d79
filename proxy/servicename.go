package proxy

import "strings"

// TrimGenerated removes from a name a client gave itself (a Kafka client.id, an AMQP
// connection_name, an AWS SDK app id) the parts that change from one instance or run of the same
// service to the next, so that its replicas share one service name; "" when nothing else is
// left. A UUID ends the name (it and all after it go), then trailing dash-separated parts go
// while they look generated:
//
//	orders-api                  -> orders-api
//	orders-api-3                -> orders-api       (instance counter, up to 7 digits: a PID)
//	orders-api-5f1c9a2e         -> orders-api       (hex id of 8+ digits)
//	orders-api-2.4.1            -> orders-api       (version)
//	orders-api-7d9f8b6c4-x2k9p  -> orders-api       (Kubernetes pod name)
//	orders-api-1b4e28ba-2fa1-11d2-883f-0016d3cca427-x -> orders-api
//	3, v2.0.1, 1b4e28ba-2fa1-11d2-883f-0016d3cca427  -> ""
func TrimGenerated(name string) string {
	s := strings.TrimSpace(name)
	if i := uuidAt(s); i >= 0 {
		s = strings.TrimRight(s[:i], "-_.")
	}
	pod := false // a Kubernetes pod suffix was removed: a ReplicaSet hash may come before it
	for {
		i := strings.LastIndexByte(s, '-')
		if i <= 0 {
			break
		}
		tail := s[i+1:]
		switch {
		case isCounter(tail) || isHexID(tail) || isVersion(tail):
		case len(tail) == 5 && !pod && inPodAlphabet(tail):
			pod = true
		case len(tail) >= 6 && len(tail) <= 10 && pod && inPodAlphabet(tail):
			pod = false
		default:
			i = -1
		}
		if i < 0 {
			break
		}
		s = s[:i]
	}
	if isCounter(s) || isVersion(s) {
		return ""
	}
	return s
}

// isCounter: 1 to 7 digits (an instance number, a PID); 8 and more are isHexID's.
func isCounter(s string) bool {
	if s == "" || len(s) > 7 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func isHexID(s string) bool {
	if len(s) < 8 {
		return false
	}
	digits := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9':
			digits = true
		case c >= 'a' && c <= 'f', c >= 'A' && c <= 'F':
		default:
			return false
		}
	}
	return digits
}

// isVersion: digits and dots with at least one dot (2.0.2, v1.4, 0.11.0).
func isVersion(s string) bool {
	s = strings.TrimPrefix(s, "v")
	if s == "" || !strings.Contains(s, ".") || s[0] == '.' || s[len(s)-1] == '.' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if (s[i] < '0' || s[i] > '9') && s[i] != '.' {
			return false
		}
	}
	return true
}

// inPodAlphabet: every character is one Kubernetes uses for generated name suffixes (no vowels,
// so real words rarely pass): the ReplicaSet hash and a pod's 5-character suffix.
func inPodAlphabet(s string) bool {
	for i := 0; i < len(s); i++ {
		if !strings.ContainsRune("bcdfghjklmnpqrstvwxz2456789", rune(s[i])) {
			return false
		}
	}
	return true
}

// uuidAt is where the first UUID (8-4-4-4-12 hex digits) in s starts, or -1.
func uuidAt(s string) int {
	const n = 36
	for i := 0; i+n <= len(s); i++ {
		if i > 0 && isHexDigit(s[i-1]) {
			continue // inside a longer hex run
		}
		if isUUID(s[i:i+n]) && (i+n == len(s) || !isHexDigit(s[i+n])) {
			return i
		}
	}
	return -1
}

func isUUID(u string) bool {
	for i := 0; i < len(u); i++ {
		if i == 8 || i == 13 || i == 18 || i == 23 {
			if u[i] != '-' {
				return false
			}
			continue
		}
		if !isHexDigit(u[i]) {
			return false
		}
	}
	return true
}

func isHexDigit(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}
