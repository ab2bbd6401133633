<?php
// roundcube for {{ host.hostname }}, written by miab-remote (recipes/webmail.py): a re-deploy overwrites
// local changes; put yours in hosts/templates/etc/roundcube/config.inc.php instead.
$config = [];

// Its state lives in the box's state tree ({{ layout.STATE }}), so a backup of that tree has it.
$config['db_dsnw'] = 'sqlite:///{{ roundcube_db }}?mode=0600';

// dovecot and postfix on this box, over TLS, verifying the box's certificate by the box's name.
$tls = [
    'ssl' => [
        'verify_peer' => true,
        'verify_peer_name' => true,
        'peer_name' => '{{ host.hostname }}',
        'cafile' => '{{ roundcube_cafile }}',
        'crypto_method' => STREAM_CRYPTO_METHOD_TLSv1_2_CLIENT | STREAM_CRYPTO_METHOD_TLSv1_3_CLIENT,
    ],
];
$config['imap_host'] = 'ssl://localhost:993';
$config['imap_conn_options'] = $tls;
$config['smtp_host'] = 'tls://localhost:587';
$config['smtp_conn_options'] = $tls;
$config['smtp_user'] = '%u';
$config['smtp_pass'] = '%p';
// The port is part of the address: roundcube 1.6 reads no managesieve_port.
$config['managesieve_host'] = 'tls://localhost:4190';
$config['managesieve_conn_options'] = $tls;
$config['managesieve_vacation'] = 1;

// The special folders dovecot creates and subscribes for every user.
$config['drafts_mbox'] = 'Drafts';
$config['sent_mbox'] = 'Sent';
$config['trash_mbox'] = 'Trash';
$config['junk_mbox'] = 'Spam';
$config['archive_mbox'] = 'Archive';
$config['create_default_folders'] = false;

$config['product_name'] = '{{ host.hostname }} webmail';
$config['support_url'] = '';
$config['skin'] = 'elastic';
$config['plugins'] = ['archive', 'zipdownload', 'managesieve', 'markasjunk'];
$config['enable_spellcheck'] = false;
$config['use_https'] = true;
$config['session_samesite'] = 'Lax';
$config['login_rate_limit'] = 3;
$config['max_message_size'] = {{ options.message_size_limit }};

// The key that encrypts the IMAP password kept in each session: made once on this box, never rendered.
$config['cipher_method'] = 'AES-256-CBC';
require '{{ roundcube_secrets }}';
