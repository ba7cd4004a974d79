package main

import (
	"bufio"
	"bytes"
	"math/rand/v2"
	"strings"
	"testing"
	"text/tabwriter"
)

// TestTextTableAsTabwriter: textTable writes what text/tabwriter (minwidth 0, tabwidth 0,
// padding 2, spaces, no flags) writes for the same rows, on edge cases the golden files do not
// hold: no rows, one column, empty cells and columns, wide and combining runes, emoji, U+FFFD,
// and cells far wider than tablePadding.
func TestTextTableAsTabwriter(t *testing.T) {
	cells := append([]string{"", " ", "x", "日本語テキスト", "e\u0301cole", "👍🏽 ok", "\uFFFD", strings.Repeat("w", 200),
		strings.Repeat("語", 150), "a  b", "bad\xffbyte", "ctl\x01\u0085x"}, oddNames...)
	rng := rand.New(rand.NewPCG(7, 9))
	for round := range 500 {
		cols, rows := 1+rng.IntN(6), rng.IntN(6)
		if round == 0 {
			cols, rows = 3, 0
		}
		var want bytes.Buffer
		tw := tabwriter.NewWriter(&want, 0, 0, 2, ' ', 0)
		tt := newTextTable(cols, rows, 0)
		for range rows {
			line := make([]string, cols)
			for c := range line {
				line[c] = string(appendCell(nil, cells[rng.IntN(len(cells))]))
				tt.text = append(tt.text, line[c]...)
				tt.endCell()
			}
			tw.Write([]byte(strings.Join(line, "\t") + "\n"))
		}
		tw.Flush()
		var got bytes.Buffer
		w := bufio.NewWriter(&got)
		tt.writeTo(w)
		w.Flush()
		if got.String() != want.String() {
			t.Fatalf("round %d (%d columns, %d rows):\ntextTable:\n%q\ntabwriter:\n%q", round, cols, rows, got.String(), want.String())
		}
	}
}
