package errtrack

// FakeAgent lets the external integration tests (package errtrack_test) decode spans too.
type FakeAgent = fakeAgent

// Spans returns every span the fake Agent decoded.
func (f *fakeAgent) Spans() []map[string]any { return f.spans() }
