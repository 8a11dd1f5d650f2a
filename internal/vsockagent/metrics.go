package vsockagent

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Metrics is the guest's resource use (op metrics; E2B's sandbox
// metrics). Sizes are bytes.
type Metrics struct {
	CPUCount   int     `json:"cpu_count"`
	CPUUsedPct float64 `json:"cpu_used_pct"`
	MemTotal   uint64  `json:"mem_total"`
	MemUsed    uint64  `json:"mem_used"` // total less available
	MemCache   uint64  `json:"mem_cache"`
	DiskUsed   uint64  `json:"disk_used"` // of the file system at /
	DiskTotal  uint64  `json:"disk_total"`
}

// cpuSample is the time over which cpu_used_pct is measured.
const cpuSample = 100 * time.Millisecond

func (a *Agent) metricsOp(st *Stream) {
	m, err := readMetrics("/proc", "/")
	if err != nil {
		st.Fail(err)
		return
	}
	sendJSON(st, m)
}

// readMetrics reads proc's stat and meminfo, and statfs of disk.
func readMetrics(proc, disk string) (Metrics, error) {
	var m Metrics
	busy0, total0, n, err := cpuTimes(proc)
	if err != nil {
		return m, err
	}
	time.Sleep(cpuSample)
	busy1, total1, _, err := cpuTimes(proc)
	if err != nil {
		return m, err
	}
	m.CPUCount = n
	if total1 > total0 {
		m.CPUUsedPct = float64(busy1-busy0) * 100 / float64(total1-total0)
	}
	mem, err := memInfo(proc)
	if err != nil {
		return m, err
	}
	m.MemTotal = mem["MemTotal"]
	m.MemUsed = m.MemTotal - min(mem["MemAvailable"], m.MemTotal)
	m.MemCache = mem["Cached"] + mem["Buffers"]
	var fs unix.Statfs_t
	if err := unix.Statfs(disk, &fs); err != nil {
		return m, fmt.Errorf("statfs %s: %w", disk, err)
	}
	m.DiskTotal = fs.Blocks * uint64(fs.Bsize)
	m.DiskUsed = (fs.Blocks - fs.Bfree) * uint64(fs.Bsize)
	return m, nil
}

// cpuTimes sums proc/stat's cpu line: busy and total jiffies, and
// counts the cpuN lines.
func cpuTimes(proc string) (busy, total uint64, cpus int, err error) {
	f, err := os.Open(proc + "/stat")
	if err != nil {
		return 0, 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || !strings.HasPrefix(fields[0], "cpu") {
			continue
		}
		if fields[0] != "cpu" {
			cpus++
			continue
		}
		// user nice system idle iowait irq softirq steal (guest time is
		// already in user).
		for i, v := range fields[1:min(len(fields), 9)] {
			n, _ := strconv.ParseUint(v, 10, 64)
			total += n
			if i != 3 && i != 4 { // idle, iowait
				busy += n
			}
		}
	}
	return busy, total, cpus, sc.Err()
}

// memInfo reads proc/meminfo in bytes.
func memInfo(proc string) (map[string]uint64, error) {
	b, err := os.ReadFile(proc + "/meminfo")
	if err != nil {
		return nil, err
	}
	out := map[string]uint64{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		n, _ := strconv.ParseUint(f[0], 10, 64)
		if len(f) > 1 && f[1] == "kB" {
			n *= 1024
		}
		out[k] = n
	}
	return out, nil
}
