# Managed by miab-remote. Runs before each user's own script, for every delivered message.
require ["vnd.dovecot.filter", "fileinto", "mailbox"];

# spamassassin scores the message and adds its X-Spam-* headers (spamc passes the message through
# unchanged if spamd is down, so mail is never lost).
filter "spamc-filter";

if header :is "X-Spam-Flag" "YES" {
  fileinto :create "Spam";
  stop;
}

# DMARC: the message fails its sender domain's check, and the domain asks for quarantine (opendmarc
# delivers such mail and records p=quarantine, or dis=quarantine where a p=reject was sampled down). Only
# this box's own header counts: opendkim removes those that arrived with the message.
if anyof (header :matches "Authentication-Results" "{{ host.hostname }};*dmarc=fail (p=quarantine*",
          header :matches "Authentication-Results" "{{ host.hostname }};*dmarc=fail (*dis=quarantine*") {
  fileinto :create "Spam";
  stop;
}
