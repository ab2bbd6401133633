# Managed by miab-remote. A message moved into Spam: train spamassassin with it as spam.
require ["vnd.dovecot.pipe", "copy", "imapsieve"];
pipe :copy "learn-spam";
