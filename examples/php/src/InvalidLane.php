<?php

// examples/php/src/InvalidLane.php: 22023 "lane urgent is reserved for
// removals that take access away": pass interactive or bulk.

declare(strict_types=1);

namespace Lhdiscord;

class InvalidLane extends InvalidArgument
{
}
