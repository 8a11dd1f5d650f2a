// Command bareinit is the baseline for boot measurements: an initramfs
// /init that does nothing but say it runs and power the VM off.
package main

import (
	"os"
	"syscall"
)

func main() {
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
		f.WriteString("BARE READY\n")
	} else {
		os.Stdout.WriteString("BARE READY\n")
	}
	syscall.Sync()
	syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF)
	syscall.Reboot(syscall.LINUX_REBOOT_CMD_RESTART)
}
