package imagepull

import (
	"fmt"
	"testing"
)

func TestBuildExt4Headroom(t *testing.T) {
	for _, n := range []int{3, 5000} {
		t.Run(fmt.Sprintf("%d files", n), func(t *testing.T) {
			var ents []ent
			for i := 0; i < n; i++ {
				ents = append(ents, ent{Name: fmt.Sprintf("d%d/f%d", i%20, i), Body: "x"})
			}
			img, st := buildImage(t, tarLayer(t, ents...))
			e2fsckClean(t, img)
			if st.FreeBlocks*4096 < DefaultHeadroom.MinFreeBytes || st.FreeInodes < int64(DefaultHeadroom.FreeInodes) {
				t.Errorf("%d free blocks, %d free inodes; want ≥%d bytes and ≥%d inodes", st.FreeBlocks, st.FreeInodes, DefaultHeadroom.MinFreeBytes, DefaultHeadroom.FreeInodes)
			}
			// Small images stay small: growth is for space, not inodes.
			if st.SizeBytes > 128<<20 {
				t.Errorf("apparent size %d bytes for a tiny image", st.SizeBytes)
			}
			if stat(t, img, "/"+reserveDir).Exists {
				t.Errorf("inode reserve directory left in the image")
			}
		})
	}
}
