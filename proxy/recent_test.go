package proxy

import (
	"fmt"
	"testing"
)

// TestRecentMap: keys in use survive any number of new ones, an unused key is forgotten after
// two generations, and the map never holds more than its limit.
func TestRecentMap(t *testing.T) {
	m := NewRecentMap[string, int](10)
	m.Put("busy", 1)
	m.Put("idle", 2)
	for i := range 100 {
		m.Put(fmt.Sprint("new-", i), i)
		if v, ok := m.Get("busy"); !ok || v != 1 {
			t.Fatalf("after %d new keys, busy = %d, %v", i+1, v, ok)
		}
		if m.Len() > 10 {
			t.Fatalf("after %d new keys the map holds %d, limit 10", i+1, m.Len())
		}
	}
	if _, ok := m.Get("idle"); ok {
		t.Error("idle key still held after 100 new keys")
	}
	// A Put of a key in the previous generation moves it, not copies it.
	m.Put("busy", 3)
	if v, _ := m.Get("busy"); v != 3 {
		t.Errorf("busy = %d after Put 3", v)
	}
	if _, ok := m.previous["busy"]; ok {
		t.Error("busy is held in both generations")
	}
	m.Delete("busy")
	if _, ok := m.Get("busy"); ok {
		t.Error("busy still held after Delete")
	}
}

func TestFirstSeen(t *testing.T) {
	var none *FirstSeen[string]
	for range 2 {
		if !none.Add("a") {
			t.Fatal("a nil FirstSeen did not take every key as new")
		}
	}
	if ks := none.Keys(); len(ks) != 0 || none.Has("a") {
		t.Errorf("a nil FirstSeen has keys %v", ks)
	}
	s := NewFirstSeen[string](4) // two generations of two
	for _, tc := range []struct {
		key  string
		want bool
	}{{"a", true}, {"a", false}, {"b", true}, {"c", true}, {"a", false}, {"d", true}, {"e", true}, {"b", true}} {
		if got := s.Add(tc.key); got != tc.want {
			t.Fatalf("Add(%q) = %v, want %v (keys %v)", tc.key, got, tc.want, s.Keys())
		}
	}
	// Has tells without adding; a key in the previous generation it leaves there, for Add (with
	// the caller's own copy) to move back.
	if s.Has("z") || s.Add("z") != true {
		t.Error("Has added a key, or found one never added")
	}
	if !s.Has("z") || s.Add("z") {
		t.Error("Has or Add did not find a key just added")
	}
	s.Add("y") // a new generation: "b" and "z" are the previous one
	if s.Has("z") {
		t.Error("Has found a key of the previous generation")
	}
	if _, ok := s.m.previous["z"]; !ok {
		t.Error("Has moved a key of the previous generation")
	}
	if s.Add("z") || !s.Has("z") {
		t.Error("Add did not move back a key of the previous generation")
	}
}
