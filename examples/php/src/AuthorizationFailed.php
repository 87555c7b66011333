<?php

// examples/php/src/AuthorizationFailed.php: 28000 "Discord authorization
// failed.": the OAuth2 callback failed (unknown, reused, expired or someone
// else's state, a refused code, Discord down). Nothing was written; let the
// user start again.

declare(strict_types=1);

namespace Lhdiscord;

class AuthorizationFailed extends LhdiscordException
{
}
