package main

import (
	"bufio"
	"strings"
	"unicode"
	"unicode/utf8"
)

// textTable lays out rows of cells in columns as text/tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
// does for a table whose rows all have the same number of cells: every cell but a row's last is
// padded with spaces to its column's widest cell, in runes, + 2. Cells must hold no tab, line
// break or 0xff byte (appendCell makes them so). They are kept in one buffer, sized once:
// tabwriter took a slice per line and copied each cell twice, which was most of what a /dsm of
// tens of thousands of pathways allocated.
type textTable struct {
	text   []byte
	ends   []int32 // where each cell ends in text
	widths []int   // the widest cell of each column but the last
	cols   int
}

// newTextTable returns a table of cols columns with room for rows rows of size bytes of text.
func newTextTable(cols, rows, size int) *textTable {
	return &textTable{text: make([]byte, 0, size), ends: make([]int32, 0, rows*cols), widths: make([]int, cols-1), cols: cols}
}

// endCell ends the cell appended to text since the one before.
func (t *textTable) endCell() {
	start := int32(0)
	if n := len(t.ends); n > 0 {
		start = t.ends[n-1]
	}
	if col := len(t.ends) % t.cols; col < t.cols-1 {
		t.widths[col] = max(t.widths[col], utf8.RuneCount(t.text[start:]))
	}
	t.ends = append(t.ends, int32(len(t.text)))
}

// cells adds cells that are tab-separated in s, as a header row is written.
func (t *textTable) cells(s string) {
	for c := range strings.SplitSeq(s, "\t") {
		t.text = append(t.text, c...)
		t.endCell()
	}
}

const tablePadding = "                                                                "

// writeTo writes the rows, a line each, with the padding tabwriter would give them.
func (t *textTable) writeTo(w *bufio.Writer) {
	start := int32(0)
	for i, end := range t.ends {
		c := t.text[start:end]
		start = end
		w.Write(c)
		col := i % t.cols
		if col == t.cols-1 {
			w.WriteByte('\n')
			continue
		}
		for pad := t.widths[col] + 2 - utf8.RuneCount(c); pad > 0; pad -= len(tablePadding) {
			w.WriteString(tablePadding[:min(pad, len(tablePadding))])
		}
	}
}

// appendCell appends s as one cell of a plain-text table: names come from clients and brokers,
// and a tab or a line break in one would make columns or rows of its own. Control characters
// become '?' and invalid bytes U+FFFD.
func appendCell(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= utf8.RuneSelf || c < ' ' || c == 0x7f {
			return appendCellRunes(append(b, s[:i]...), s[i:])
		}
	}
	return append(b, s...)
}

func appendCellRunes(b []byte, s string) []byte {
	for _, r := range s {
		if unicode.IsControl(r) {
			r = '?'
		}
		b = utf8.AppendRune(b, r)
	}
	return b
}

// appendEdge appends edge tags as one cell: direction:in group:billing topic:orders type:kafka.
// The type stays: a Kafka topic and an SNS topic may share a name.
func appendEdge(b []byte, tags []string) []byte {
	for i, t := range tags {
		if i > 0 {
			b = append(b, ' ')
		}
		b = appendCell(b, t)
	}
	return b
}
