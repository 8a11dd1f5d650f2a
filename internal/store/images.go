package store

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"banger/internal/api"
)

// InsertImage records a published image. The name must be unused:
// ErrExists otherwise.
func (s *Store) InsertImage(ctx context.Context, img api.Image) error {
	cfg, err := json.Marshal(img.Config)
	if err != nil {
		return err
	}
	layers, err := json.Marshal(img.Layers)
	if err != nil {
		return err
	}
	if img.CreatedAt.IsZero() {
		img.CreatedAt = time.Now()
	}
	_, err = s.db.ExecContext(ctx, `INSERT INTO images
		(id, name, ref, digest, rootfs, size_bytes, disk_bytes, config, layers, created_at, source, owner)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		img.ID, img.Name, img.Ref, img.Digest, img.Rootfs, img.SizeBytes, img.DiskBytes,
		string(cfg), string(layers), img.CreatedAt.UTC().Format(time.RFC3339Nano), img.Source, img.Owner)
	if isUnique(err) {
		return fmt.Errorf("image %q: %w", img.Name, ErrExists)
	}
	if err != nil {
		return fmt.Errorf("recording image %q: %w", img.Name, err)
	}
	return nil
}

const imageColumns = `id, name, ref, digest, rootfs, size_bytes, disk_bytes, config, layers, created_at, source, owner`

func scanImage(row scanner) (api.Image, error) {
	var img api.Image
	var cfg, layers, created string
	if err := row.Scan(&img.ID, &img.Name, &img.Ref, &img.Digest, &img.Rootfs, &img.SizeBytes, &img.DiskBytes, &cfg, &layers, &created, &img.Source, &img.Owner); err != nil {
		return img, err
	}
	if err := json.Unmarshal([]byte(cfg), &img.Config); err != nil {
		return img, fmt.Errorf("image %q: decoding config: %w", img.Name, err)
	}
	if err := json.Unmarshal([]byte(layers), &img.Layers); err != nil {
		return img, fmt.Errorf("image %q: decoding layers: %w", img.Name, err)
	}
	t, err := time.Parse(time.RFC3339Nano, created)
	if err != nil {
		return img, fmt.Errorf("image %q: decoding created_at: %w", img.Name, err)
	}
	img.CreatedAt = t
	return img, nil
}

// Image returns the image with the given name, or ErrNotFound.
func (s *Store) Image(ctx context.Context, name string) (api.Image, error) {
	return getByName(ctx, s.db, "images", imageColumns, "image", name, scanImage)
}

// Images returns every image, by name.
func (s *Store) Images(ctx context.Context) ([]api.Image, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+imageColumns+` FROM images ORDER BY name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []api.Image{}
	for rows.Next() {
		img, err := scanImage(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, img)
	}
	return out, rows.Err()
}

// DeleteImage removes the record of the named image and returns it, or
// ErrNotFound.
func (s *Store) DeleteImage(ctx context.Context, name string) (api.Image, error) {
	return deleteByName(ctx, s, "images", imageColumns, "image", name, scanImage)
}
