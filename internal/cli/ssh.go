package cli

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"

	"banger/client"
	"banger/internal/api"
	"banger/internal/system"
	"banger/internal/vsockagent"
)

// sshDir holds the user's banger SSH key, and the config stanza: in the
// instance with BANGER_HOME, else in ~/.config/banger/ssh.
func (a *app) sshDir() (string, error) {
	if a.layout.Home != "" {
		return filepath.Join(a.layout.Home, "ssh"), nil
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "banger", "ssh"), nil
}

// userKey returns the user's banger SSH key file, making the key the
// first time, and registers its public half with the daemon (which
// authorizes it in every VM).
func (a *app) userKey(ctx context.Context, c *client.Client) (string, error) {
	dir, err := a.sshDir()
	if err != nil {
		return "", err
	}
	key := filepath.Join(dir, "id_ed25519")
	pub, err := os.ReadFile(key + ".pub")
	if err != nil {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return "", err
		}
		pk, sk, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return "", err
		}
		block, err := ssh.MarshalPrivateKey(sk, "banger")
		if err != nil {
			return "", err
		}
		sp, _ := ssh.NewPublicKey(pk)
		pub = ssh.MarshalAuthorizedKey(sp)
		if err := os.WriteFile(key, pem.EncodeToMemory(block), 0o600); err != nil {
			return "", fmt.Errorf("writing your banger SSH key: %w", err)
		}
		if err := os.WriteFile(key+".pub", pub, 0o644); err != nil {
			return "", err
		}
	}
	if err := c.AddSSHKey(ctx, api.SSHKeyRequest{Key: strings.TrimSpace(string(pub))}); err != nil {
		return "", err
	}
	return key, nil
}

// sshOptions are the ssh options that reach a VM through its agent:
// banger's key, the VM's recorded host key, and a ProxyCommand, so no
// DNS, route or port 22 is needed on the host.
func sshOptions(self, key string) []string {
	return []string{
		"-o", "IdentityFile=" + key, "-o", "IdentitiesOnly=yes",
		"-o", "UserKnownHostsFile=/dev/null", "-o", "KnownHostsCommand=" + self + " vm known-hosts %H",
		"-o", "StrictHostKeyChecking=yes", "-o", "ProxyCommand=" + self + " vm ssh-proxy %n",
	}
}

func vmName(host string) string { return strings.TrimSuffix(strings.TrimSuffix(host, "."), ".vm") }

func newVMSSHCommand(a *app) *cobra.Command {
	var user string
	cmd := &cobra.Command{
		Use:   "ssh VM [-- COMMAND...]",
		Short: "SSH into a VM (the agent's SSH server, reached through the agent: no sshd or network needed)",
		Args:  argsError(cobra.MinimumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			key, err := a.userKey(cmd.Context(), c)
			if err != nil {
				return err
			}
			sshBin, err := system.LookPath("ssh")
			if err != nil {
				return errors.New("no ssh client: apt-get install openssh-client (or use `banger vm shell`)")
			}
			self, err := os.Executable()
			if err != nil {
				return err
			}
			argv := append([]string{"ssh"}, sshOptions(self, key)...)
			argv = append(argv, user+"@"+vmName(args[0])+".vm")
			argv = append(argv, args[1:]...)
			return syscall.Exec(sshBin, argv, os.Environ())
		},
	}
	cmd.Flags().StringVarP(&user, "user", "l", "root", "user to log in as")
	return cmd
}

func newVMSSHProxyCommand(a *app) *cobra.Command {
	return &cobra.Command{
		Use:    "ssh-proxy VM",
		Short:  "Carry an SSH connection to a VM's agent over stdin and stdout (ssh's ProxyCommand)",
		Hidden: true,
		Args:   argsError(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := context.WithoutCancel(cmd.Context())
			s, err := a.agent(ctx, vmName(args[0]))
			if err != nil {
				return err
			}
			defer s.Close()
			st, err := s.Open(ctx, vsockagent.Request{Op: "ssh"})
			if err != nil {
				return err
			}
			go func() {
				io.Copy(st, os.Stdin)
				st.CloseWrite()
			}()
			_, err = io.Copy(os.Stdout, st)
			return err
		},
	}
}

func newVMKnownHostsCommand(a *app) *cobra.Command {
	return &cobra.Command{
		Use:    "known-hosts VM",
		Short:  "Print a VM's SSH host key as a known_hosts line (ssh's KnownHostsCommand)",
		Hidden: true,
		Args:   argsError(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			v, err := c.VM(cmd.Context(), vmName(args[0]))
			if err != nil {
				return err
			}
			if v.SSHHostKey == "" {
				return fmt.Errorf("VM %s has no SSH host key (created by an older banger): recreate it", v.Name)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s.vm %s\n", v.Name, v.SSHHostKey)
			return nil
		},
	}
}

func newSSHConfigCommand(a *app) *cobra.Command {
	var install bool
	cmd := &cobra.Command{
		Use:   "ssh-config",
		Short: "Print (or --install) an ssh_config stanza so `ssh NAME.vm`, scp, rsync and editors reach VMs",
		Long: "The stanza matches *.vm and goes through banger: your banger key (made and\n" +
			"authorized in every VM on first use), each VM's recorded host key, and a\n" +
			"ProxyCommand through the VM's agent. --install writes it to the banger SSH\n" +
			"directory and adds an Include line at the top of ~/.ssh/config.",
		Args: argsError(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			key, err := a.userKey(cmd.Context(), c)
			if err != nil {
				return err
			}
			self, err := os.Executable()
			if err != nil {
				return err
			}
			var b strings.Builder
			b.WriteString("Host *.vm\n    User root\n")
			opts := sshOptions(self, key)
			for i := 1; i < len(opts); i += 2 {
				// The commands take the rest of the line, unquoted.
				k, v, _ := strings.Cut(opts[i], "=")
				fmt.Fprintf(&b, "    %s %s\n", k, v)
			}
			if !install {
				fmt.Fprint(cmd.OutOrStdout(), b.String())
				return nil
			}
			dir, _ := a.sshDir()
			conf := filepath.Join(dir, "config")
			if err := os.WriteFile(conf, []byte(b.String()), 0o644); err != nil {
				return err
			}
			home, err := os.UserHomeDir()
			if err != nil {
				return err
			}
			userConf := filepath.Join(home, ".ssh", "config")
			old, _ := os.ReadFile(userConf)
			include := "Include " + conf
			if !strings.Contains(string(old), include) {
				os.MkdirAll(filepath.Dir(userConf), 0o700)
				if err := os.WriteFile(userConf, []byte(include+"\n\n"+string(old)), 0o600); err != nil {
					return err
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s and included it from %s: try `ssh NAME.vm`\n", conf, userConf)
			return nil
		},
	}
	cmd.Flags().BoolVar(&install, "install", false, "write the stanza and include it from ~/.ssh/config")
	return cmd
}
