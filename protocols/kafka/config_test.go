package kafka

import (
	"strings"
	"testing"
)

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no bootstrap", Config{Listen: "127.0.0.1:9092"}, "Bootstrap"},
		{"bad listen", Config{Listen: "nope", Bootstrap: []string{"b:9092"}}, "Listen"},
		{"wildcard without advertised host", Config{Listen: "0.0.0.0:9092", Bootstrap: []string{"b:9092"}}, "AdvertisedHost"},
		{"bad node addr", Config{Listen: "127.0.0.1:9092", Bootstrap: []string{"b:9092"}, NodeAddrs: map[int32]string{1: "x"}}, "NodeAddrs[1]"},
	} {
		_, err := New(tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one naming %s", tc.name, err, tc.want)
		}
	}
}

func TestNodeListenAddr(t *testing.T) {
	p, err := New(Config{Listen: "127.0.0.1:19092", Bootstrap: []string{"b:9092"}, AdvertisedHost: "proxy.example",
		NodeAddrs: map[int32]string{7: "0.0.0.0:30007", 8: "10.0.0.8:30008"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		id             int32
		addr, adv, err string
	}{
		{0, "127.0.0.1:19093", "proxy.example", ""}, // default: Listen port + 1 + node id
		{1001, "127.0.0.1:20094", "proxy.example", ""},
		{7, "0.0.0.0:30007", "proxy.example", ""}, // explicit, wildcard host -> AdvertisedHost
		{8, "10.0.0.8:30008", "10.0.0.8", ""},
		{50000, "", "", "node_port_base"}, // 19093+50000 > 65535
		{-1, "", "", "node_port_base"},
	} {
		addr, adv, err := p.nodeListenAddr(tc.id)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("node %d: error %v, want one naming %s", tc.id, err, tc.err)
			}
			continue
		}
		if err != nil || addr != tc.addr || adv != tc.adv {
			t.Errorf("node %d: %s advertised %s (%v), want %s advertised %s", tc.id, addr, adv, err, tc.addr, tc.adv)
		}
	}
	q, _ := New(Config{Listen: "127.0.0.1:0", Bootstrap: []string{"b:9092"}})
	if addr, _, err := q.nodeListenAddr(3); err != nil || addr != "127.0.0.1:0" {
		t.Errorf("ephemeral node listener: %s %v", addr, err)
	}
}
