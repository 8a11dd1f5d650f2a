package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"banger/client"
	"banger/internal/api"
)

func newE2BCommand(a *app) *cobra.Command {
	cmd := &cobra.Command{Use: "e2b", Short: "The E2B-compatible endpoint: API keys for the e2b SDK"}
	key := &cobra.Command{Use: "key", Aliases: []string{"keys"}, Short: "Make, list and remove E2B API keys (each acts as the user who made it)"}
	key.AddCommand(
		newE2BKeyCreateCommand(a),
		newListCommand(a, listSpec[api.E2BKey]{
			short: "List your E2B API keys",
			fetch: (*client.Client).E2BKeys,
			name:  func(k api.E2BKey) string { return k.ID },
			head:  "ID\tNAME\tKEY\tCREATED\tLAST USED",
			row: func(k api.E2BKey) string {
				used := "never"
				if k.LastUsed != nil {
					used = humanAgo(*k.LastUsed)
				}
				return fmt.Sprintf("%s\t%s\t%s…\t%s\t%s", k.ID, orDash(k.Name), k.Prefix, humanAgo(k.CreatedAt), used)
			},
			empty: "no E2B keys yet: `banger e2b key create`",
			owner: func(k api.E2BKey) string { return orDash(k.OwnerName) },
		}),
		newRmCommand(a, "Remove E2B API keys, by id or name (their sandboxes stay, yours)", func(ctx context.Context, c *client.Client, id string) error {
			_, err := c.RemoveE2BKey(ctx, id)
			return err
		}),
	)
	cmd.AddCommand(key)
	return cmd
}

func newE2BKeyCreateCommand(a *app) *cobra.Command {
	var name string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Make an API key for the e2b SDK (E2B_API_KEY); it is shown once",
		Args:  argsError(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			k, err := c.CreateE2BKey(cmd.Context(), api.E2BKeyRequest{Name: name})
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), k)
			}
			fmt.Fprintln(cmd.OutOrStdout(), k.Key)
			errw := cmd.ErrOrStderr()
			if k.APIURL == "" {
				fmt.Fprintln(errw, "banger: the E2B endpoint is off: set [e2b] listen = \"127.0.0.1:3000\" in the config (`banger config show` says where) and restart bangerd")
				return nil
			}
			fmt.Fprintf(errw, "Keep it: it is not shown again. For the e2b SDK:\n  export E2B_API_KEY=%s E2B_API_URL=%s E2B_SANDBOX_URL=%s\n", k.Key, k.APIURL, k.APIURL)
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "a name to tell the key by")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
