package shard

import (
	"bytes"
	"testing"
	"time"
)

// TestItemExtension: an Item's body pointer and its extension share one
// field; the body survives the extension coming (an odd ETag, variants, a
// far modification time, an odd type) and going, copies share both, and a
// Body set while the extension exists lands in it.
func TestItemExtension(t *testing.T) {
	body := []byte("hello, world")
	it := &Item{Path: "/x", Size: int64(len(body))}
	if err := it.SetBody(body); err != nil {
		t.Fatal(err)
	}
	check := func(step string, it *Item, wantMore bool) {
		t.Helper()
		if !bytes.Equal(it.Body(), body) || &it.Body()[0] != &body[0] {
			t.Errorf("%s: Body %q, not the bytes set", step, it.Body())
		}
		if (it.more() != nil) != wantMore {
			t.Errorf("%s: extension %v, want one: %v", step, it.more(), wantMore)
		}
	}
	check("set", it, false)
	it.SetETag(`W/"weak"`)
	check("odd ETag", it, true)
	far := time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC)
	it.SetModTime(far)
	it.SetVariants([]Variant{{Encoding: "br", Size: 3, Body: []byte("abc")}})
	check("variants, far time", it, true)
	if it.ETag() != `W/"weak"` || !it.ModTime().Equal(far) || it.Variant("br") == nil {
		t.Errorf("extension lost: ETag %q, time %v, variant %v", it.ETag(), it.ModTime(), it.Variant("br"))
	}
	c := it.copyFields()
	check("copy", c, true)
	if c.ETag() != `W/"weak"` || c.Variant("br") == nil {
		t.Errorf("copy: ETag %q, variant %v", c.ETag(), c.Variant("br"))
	}
	other := []byte("HELLO, WORLD")
	if err := c.SetBody(other); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(c.Body(), other) || !bytes.Equal(it.Body(), body) {
		t.Errorf("a copy's new body: copy %q, original %q", c.Body(), it.Body())
	}
	it.SetVariants(nil)
	it.SetModTime(time.Unix(5, 0))
	it.SetETag(`"` + string(Tag{1}.appendHex(nil)) + `"`)
	check("back to plain", it, false)
	if err := it.SetBody(nil); err != nil || it.Body() != nil || it.Resident() {
		t.Errorf("no body: %v, Body %q, resident %v", err, it.Body(), it.Resident())
	}
}
