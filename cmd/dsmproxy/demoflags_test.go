package main

import (
	"io"
	"strings"
	"testing"
)

// TestDemoRateRefused: a --rate the demo cannot produce at is refused with what to give, before
// anything starts. 0 and -5 used to run at 1 order a second while the banner said "0 orders/s"
// or "-5 orders/s", and 2000000000 made a ticker of no interval, which panics.
func TestDemoRateRefused(t *testing.T) {
	for _, rate := range []string{"0", "-5", "2000000000"} {
		err := cmdDemo([]string{"--rate", rate, "--duration", "1ms", "--sqs=false", "--amqp-upstream", "off"}, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "--rate "+rate) || !strings.Contains(err.Error(), "1 to 1000000") {
			t.Errorf("--rate %s: %v, want it refused with the range to give", rate, err)
		}
	}
}
