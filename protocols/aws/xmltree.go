package aws

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
)

// xnode is an XML element with the byte range it occupies in the document, so a response can be
// edited by deleting or replacing ranges while every other byte stays as AWS sent it (message
// bodies must round-trip exactly, `&#xD;` included).
type xnode struct {
	Name       string
	Start, End int // outer range: '<Name' .. past '</Name>'
	// InStart, InEnd is the content range between the tags (InStart == InEnd for <x/>).
	InStart, InEnd int
	Text           string // concatenated character data directly inside, entities decoded
	Kids           []*xnode
}

const maxXMLDepth = 64

// parseXML builds the element tree of doc; the returned node is a synthetic root.
func parseXML(doc []byte) (*xnode, error) {
	d := xml.NewDecoder(bytes.NewReader(doc))
	d.Strict = true
	root := &xnode{End: len(doc)}
	stack := []*xnode{root}
	for {
		off := int(d.InputOffset())
		tok, err := d.RawToken()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("xml at offset %d: %w", off, err)
		}
		end := int(d.InputOffset())
		top := stack[len(stack)-1]
		switch t := tok.(type) {
		case xml.StartElement:
			if len(stack) > maxXMLDepth {
				return nil, errors.New("xml nested too deep")
			}
			n := &xnode{Name: t.Name.Local, Start: off, InStart: end}
			top.Kids = append(top.Kids, n)
			stack = append(stack, n)
		case xml.EndElement:
			if len(stack) == 1 || top.Name != t.Name.Local {
				return nil, fmt.Errorf("xml at offset %d: unexpected </%s>", off, t.Name.Local)
			}
			top.InEnd = off
			top.End = end
			// <x/> yields a StartElement and an EndElement at the same offset
			if top.InEnd < top.InStart {
				top.InEnd = top.InStart
			}
			stack = stack[:len(stack)-1]
		case xml.CharData:
			if len(stack) > 1 {
				top.Text += string(t)
			}
		}
	}
	if len(stack) != 1 {
		return nil, errors.New("xml document ends inside an element")
	}
	return root, nil
}

// find returns the first descendant named name (depth first).
func (n *xnode) find(name string) *xnode {
	for _, k := range n.Kids {
		if k.Name == name {
			return k
		}
		if f := k.find(name); f != nil {
			return f
		}
	}
	return nil
}

// findAll returns every descendant named name, not descending into matches.
func (n *xnode) findAll(name string, out []*xnode) []*xnode {
	for _, k := range n.Kids {
		if k.Name == name {
			out = append(out, k)
			continue
		}
		out = k.findAll(name, out)
	}
	return out
}

func (n *xnode) child(name string) *xnode {
	for _, k := range n.Kids {
		if k.Name == name {
			return k
		}
	}
	return nil
}

func (n *xnode) childText(name string) string {
	if k := n.child(name); k != nil {
		return k.Text
	}
	return ""
}

func xmlEscape(s string) []byte {
	var b bytes.Buffer
	xml.EscapeText(&b, []byte(s))
	return b.Bytes()
}
