<?php

// examples/php/src/Unauthorized.php: 42501 "This action is unauthorized.":
// the portal actor may not do this (not the account's owner, not a portal
// admin). An HTTP 403.

declare(strict_types=1);

namespace Lhdiscord;

class Unauthorized extends LhdiscordException
{
}
