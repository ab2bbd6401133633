# Managed by miab-remote. Runs before each user's own script, for every delivered message.
require ["vnd.dovecot.filter", "fileinto", "mailbox"];

# spamassassin scores the message and adds its X-Spam-* headers (spamc passes the message through
# unchanged if spamd is down, so mail is never lost).
filter "spamc-filter";

if header :is "X-Spam-Flag" "YES" {
  fileinto :create "Spam";
  stop;
}
